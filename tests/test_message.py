"""The wire format: stable, versioned, and safe by default."""

from __future__ import annotations

import pickle

import msgspec
import pytest

from aioqueue import ConfigurationError, SerializationError
from aioqueue.message import ResultRecord, State, TaskMessage, get_serializer

# A version-1 envelope as a producer of aioqueue 0.1 wrote it. New fields must keep
# decoding it: schema changes are append-only with defaults.
V1_MSGPACK = bytes.fromhex(
    "85a26964a3616263a47461736ba9746573742e7461736ba461726773920102a66b"
    "776172677381a16101a57175657565a764656661756c74"
)


def test_an_old_payload_still_decodes() -> None:
    msg = get_serializer("msgpack").decode_message(V1_MSGPACK)
    assert msg == TaskMessage(id="abc", task="test.task", args=(1, 2), kwargs={"a": 1},
                              queue="default")
    assert msg.v == 1 and msg.retries == 0 and msg.reply_to is None


@pytest.mark.parametrize("name", ["msgpack", "json"])
def test_round_trip(name: str) -> None:
    serializer = get_serializer(name)
    msg = TaskMessage(id="1", task="t", args=(1, "x", [1.5]), kwargs={"k": None}, eta=1.5)
    assert serializer.decode_message(serializer.encode(msg)) == TaskMessage(
        id="1", task="t", args=(1, "x", [1.5]), kwargs={"k": None}, eta=1.5)
    record = ResultRecord(id="1", state=State.SUCCESS, result={"a": [1, 2]})
    assert serializer.decode_record(serializer.encode(record)) == record


def test_garbage_is_a_serialization_error_naming_the_format() -> None:
    with pytest.raises(SerializationError, match="undecodable task message \\(msgpack\\)"):
        get_serializer("msgpack").decode_message(b"\xc1\xff garbage")
    with pytest.raises(SerializationError, match="json"):
        get_serializer("json").decode_message(b"{not json")


def test_msgpack_never_unpickles() -> None:
    evil = pickle.dumps(TaskMessage(id="1", task="t"))
    with pytest.raises(SerializationError):
        get_serializer("msgpack").decode_message(evil)


def test_pickle_only_by_explicit_choice_and_unknown_names_are_refused() -> None:
    assert get_serializer("pickle").name == "pickle"
    with pytest.raises(ConfigurationError, match="unknown serializer 'yaml'"):
        get_serializer("yaml")


def test_v1_fixture_matches_its_description() -> None:
    # Guards the fixture itself: it is exactly the documented version-1 map.
    assert msgspec.msgpack.decode(V1_MSGPACK) == {
        "id": "abc", "task": "test.task", "args": [1, 2], "kwargs": {"a": 1}, "queue": "default"
    }
