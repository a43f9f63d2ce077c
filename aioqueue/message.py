"""The wire format: the task envelope and the result record, and their serializers.

Both are frozen ``msgspec.Struct``s. Schema evolution is append-only: a new field gets a
default and goes at the end, so an old payload still decodes (``tests/test_message.py``
decodes a frozen version-1 payload). Encoders and decoders are built once per serializer and
reused: building them is the expensive part.

Pickle is deliberately not a default: anyone able to write to Redis could make every worker
run code. It exists only behind an explicit ``serializer="pickle"``.

``task_compression`` compresses encoded task messages behind a one-byte marker (see
*compression* below); every serializer decompresses them, whatever its own setting.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Final, Protocol

import msgspec

from .errors import ConfigurationError, SerializationError

__all__ = (
    "COMPRESSIONS",
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
    #: Set by a running task's ``update_state(state="PROGRESS", meta=...)``.
    PROGRESS = "PROGRESS"

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
    #: Carried from the producer to the run (W3C trace context, see ``aioqueue.contrib.otel``);
    #: omitted from the wire when None.
    headers: dict[str, str] | None = None
    #: 0 (runs first) to 9: the lane of its queue it waits in, kept through retries.
    priority: int = 0
    #: Flow control the worker releases when the task ends for good (not on a retry):
    #: the uniqueness lock it holds (``unique_for``) and its ordering key (``order_key``).
    unique: str | None = None
    order: str | None = None


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
        if data[:1] == _COMPRESSED:
            data = _decompress(data, self.name)
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
        import pickle  # only for those who opted in

        try:
            return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SerializationError(f"cannot serialize with pickle: {exc}") from exc

    def _load(self, data: bytes, kind: type[Any]) -> Any:
        import pickle

        try:
            obj = pickle.loads(data)
        except Exception as exc:
            raise SerializationError(f"undecodable payload (pickle): {exc}") from exc
        if not isinstance(obj, kind):
            raise SerializationError(f"pickle payload is a {type(obj).__name__}, not {kind}")
        return obj

    def decode_message(self, data: bytes) -> TaskMessage:
        if data[:1] == _COMPRESSED:
            data = _decompress(data, self.name)
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


def get_serializer(name: str, compression: str | None = None) -> Serializer:
    """The serializer called ``name``: ``msgpack`` (default), ``json``, or opt-in ``pickle``.

    With ``compression`` (a name in :data:`COMPRESSIONS`) it compresses the task messages it
    encodes. Every serializer decompresses a compressed message, whatever its own setting.
    """
    if name == "pickle":
        base: Serializer = _PickleSerializer()
    else:
        try:
            base = SERIALIZERS[name]
        except KeyError:
            raise ConfigurationError(
                f"unknown serializer {name!r}: choose 'msgpack' or 'json' "
                "('pickle' only if you trust everyone who can write to your Redis)"
            ) from None
    if compression is None:
        return base
    key = (name, compression)
    wrapped = _COMPRESSING.get(key)
    if wrapped is None:
        if compression not in COMPRESSIONS:
            raise ConfigurationError(
                f"unknown compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")
        wrapped = _COMPRESSING[key] = _Compressing(base, compression)
    return wrapped


# -- compression ------------------------------------------------------------------------------
# A compressed message is _COMPRESSED + one codec tag byte + the compressed encoding. 0xC1 is
# the one byte msgpack never uses, and no JSON text (UTF-8) or pickle (0x80) starts with it,
# so a message says by its first byte whether it is compressed: no header, no setting needed
# to read it, and an older aioqueue fails to decode it rather than misreading it.
_COMPRESSED: Final = b"\xc1"
_Codec = tuple[bytes, Callable[[bytes], bytes], Callable[[bytes], bytes]]


def _lazy(module: str, function: str) -> Callable[[bytes], bytes]:
    """``module.function``, imported at its first call: gzip, bz2 and lzma together were
    a tenth of a worker's imports, for codecs most apps never use."""

    def call(data: bytes) -> bytes:
        result: bytes = getattr(importlib.import_module(module), function)(data)
        return result

    return call


_CODECS: Final[dict[str, _Codec]] = {
    "zlib": (b"z", zlib.compress, zlib.decompress),
    "gzip": (b"g", _lazy("gzip", "compress"), _lazy("gzip", "decompress")),
    "bz2": (b"b", _lazy("bz2", "compress"), _lazy("bz2", "decompress")),
    "lzma": (b"x", _lazy("lzma", "compress"), _lazy("lzma", "decompress")),
}
_BY_TAG: Final = {tag: decompress for tag, _, decompress in _CODECS.values()}
#: Names ``task_compression`` takes.
COMPRESSIONS: Final = tuple(_CODECS)
_COMPRESSING: dict[tuple[str, str], Serializer] = {}


def _decompress(data: bytes, serializer: str) -> bytes:
    decompress = _BY_TAG.get(bytes(data[1:2]))
    if decompress is None:
        raise SerializationError(
            f"undecodable task message ({serializer}): unknown compression tag {data[1:2]!r}")
    try:
        return decompress(bytes(data[2:]))
    except Exception as exc:  # zlib.error, OSError, EOFError, ValueError, lzma.LZMAError
        raise SerializationError(
            f"undecodable task message ({serializer}): corrupt compressed data: {exc}") from exc


class _Compressing:
    """A serializer that compresses the task messages it encodes (results stay as they are)."""

    def __init__(self, inner: Serializer, compression: str) -> None:
        # The inner name: the result waiter picks its fast id reader by it (records are plain).
        self.name = inner.name
        self._inner = inner
        self._tag, self._compress, _ = _CODECS[compression]

    def encode(self, obj: TaskMessage | ResultRecord) -> bytes:
        data = self._inner.encode(obj)
        if isinstance(obj, TaskMessage):
            return _COMPRESSED + self._tag + self._compress(data)
        return data

    def decode_message(self, data: bytes) -> TaskMessage:
        return self._inner.decode_message(data)

    def decode_record(self, data: bytes) -> ResultRecord:
        return self._inner.decode_record(data)
