"""The wire format: the task envelope and the result record, and their serializers.

Both are frozen ``msgspec.Struct``s. Schema evolution is append-only: a new field gets a
default and goes at the end, so an old payload still decodes (``tests/test_message.py``
decodes a frozen version-1 payload). Encoders and decoders are built once per serializer and
reused: building them is the expensive part.

Pickle is deliberately not a default: anyone able to write to Redis could make every worker
run code. It exists only behind an explicit ``serializer="pickle"``.
"""

from __future__ import annotations

import pickle
from enum import StrEnum
from typing import Any, Final, Protocol

import msgspec

from .errors import ConfigurationError, SerializationError

__all__ = (
    "SERIALIZERS",
    "ResultRecord",
    "Serializer",
    "State",
    "TaskMessage",
    "get_serializer",
)

WIRE_VERSION: Final = 1


class State(StrEnum):
    """A task's state, with Celery's names."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    RETRY = "RETRY"
    FAILURE = "FAILURE"
    SUCCESS = "SUCCESS"
    REVOKED = "REVOKED"

    def __str__(self) -> str:
        return self.value


#: States after which a task will not change again.
READY_STATES: Final = frozenset({State.SUCCESS, State.FAILURE, State.REVOKED})


class TaskMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    """One task call on the wire. Times are Unix epoch seconds (UTC)."""

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    queue: str = "default"
    retries: int = 0
    #: Not to run before this time (countdown/eta); the message waits in the delayed set.
    eta: float | None = None
    #: Not to run after this time: it is recorded REVOKED instead.
    expires: float | None = None
    #: Per-call time limit in seconds, overriding the task's.
    time_limit: float | None = None
    #: The producer's reply list: the worker pushes the result record there.
    reply_to: str | None = None
    ignore_result: bool = False
    #: Per-call max_retries override.
    max_retries: int | None = None
    v: int = WIRE_VERSION


class ResultRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """What is stored under ``result:{id}`` and pushed to a waiting producer."""

    id: str
    state: State
    result: Any = None
    #: Dotted name of the exception type (``builtins.ValueError``) for FAILURE/RETRY/REVOKED.
    exc_type: str | None = None
    exc_message: str | None = None
    traceback: str | None = None
    date_done: float | None = None
    retries: int = 0
    task: str | None = None
    worker: str | None = None
    #: Arguments of the exception, when they could be serialized; used to rebuild it.
    exc_args: tuple[Any, ...] | None = None
    v: int = WIRE_VERSION


class Serializer(Protocol):
    """Turns envelopes and records into bytes and back."""

    name: str

    def encode(self, obj: TaskMessage | ResultRecord) -> bytes:
        """Encode one envelope or record; raises ``SerializationError``."""
        ...

    def decode_message(self, data: bytes) -> TaskMessage:
        """Decode an envelope; raises ``SerializationError``."""
        ...

    def decode_record(self, data: bytes) -> ResultRecord:
        """Decode a result record; raises ``SerializationError``."""
        ...


class _MsgspecSerializer:
    """msgpack or JSON through msgspec, with reused encoder and typed decoders."""

    def __init__(self, name: str, encoder: Any, message_decoder: Any, record_decoder: Any):
        self.name = name
        self._encode = encoder.encode
        self._decode_message = message_decoder.decode
        self._decode_record = record_decoder.decode

    def encode(self, obj: TaskMessage | ResultRecord) -> bytes:
        try:
            data: bytes = self._encode(obj)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"cannot serialize with {self.name}: {exc}") from exc
        return data

    def decode_message(self, data: bytes) -> TaskMessage:
        try:
            msg: TaskMessage = self._decode_message(data)
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            raise SerializationError(f"undecodable task message ({self.name}): {exc}") from exc
        return msg

    def decode_record(self, data: bytes) -> ResultRecord:
        try:
            rec: ResultRecord = self._decode_record(data)
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            raise SerializationError(f"undecodable result record ({self.name}): {exc}") from exc
        return rec


class _PickleSerializer:
    """Opt-in only: unpickling runs code chosen by whoever wrote the payload."""

    name = "pickle"

    def encode(self, obj: TaskMessage | ResultRecord) -> bytes:
        try:
            return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SerializationError(f"cannot serialize with pickle: {exc}") from exc

    def _load(self, data: bytes, kind: type[Any]) -> Any:
        try:
            obj = pickle.loads(data)
        except Exception as exc:
            raise SerializationError(f"undecodable payload (pickle): {exc}") from exc
        if not isinstance(obj, kind):
            raise SerializationError(f"pickle payload is a {type(obj).__name__}, not {kind}")
        return obj

    def decode_message(self, data: bytes) -> TaskMessage:
        msg: TaskMessage = self._load(data, TaskMessage)
        return msg

    def decode_record(self, data: bytes) -> ResultRecord:
        rec: ResultRecord = self._load(data, ResultRecord)
        return rec


SERIALIZERS: Final[dict[str, Serializer]] = {
    "msgpack": _MsgspecSerializer(
        "msgpack",
        msgspec.msgpack.Encoder(),
        msgspec.msgpack.Decoder(TaskMessage),
        msgspec.msgpack.Decoder(ResultRecord),
    ),
    "json": _MsgspecSerializer(
        "json",
        msgspec.json.Encoder(),
        msgspec.json.Decoder(TaskMessage),
        msgspec.json.Decoder(ResultRecord),
    ),
}


def get_serializer(name: str) -> Serializer:
    """The serializer called ``name``: ``msgpack`` (default), ``json``, or opt-in ``pickle``."""
    if name == "pickle":
        return _PickleSerializer()
    try:
        return SERIALIZERS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown serializer {name!r}: choose 'msgpack' or 'json' "
            "('pickle' only if you trust everyone who can write to your Redis)"
        ) from None
