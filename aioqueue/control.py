"""Remote-control messages broadcast to workers (revoke, ping, shutdown)."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ("ControlMessage", "decode_control", "encode_control")


class ControlMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    """One broadcast: ``op`` says what, the rest says to whom."""

    op: str
    task_id: str | None = None
    terminate: bool = False
    #: Only workers with this name act on it (None: all).
    destination: str | None = None
    #: Where to answer (a list key; see ``Monitor``), for requests that expect answers.
    reply_to: str | None = None
    #: The request's arguments (``inspect``: ``what``; ``rate_limit``: ``task``, ``rate``).
    arguments: dict[str, Any] | None = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ControlMessage)


def encode_control(op: str, **fields: Any) -> bytes:
    """Encode a control message."""
    return _encoder.encode(ControlMessage(op=op, **fields))


def decode_control(data: bytes) -> ControlMessage | None:
    """Decode a control message; None if it is not one (ignored, never fatal)."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
