"""MessagePack encoding of protocol messages (never pickle)."""

from __future__ import annotations

import msgspec

from .messages import FromWorker, ToWorker

_encoder = msgspec.msgpack.Encoder()
_to_worker = msgspec.msgpack.Decoder(ToWorker)
_from_worker = msgspec.msgpack.Decoder(FromWorker)

DecodeError = msgspec.DecodeError  # raised for malformed or unexpected frames


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode_to_worker(frame: bytes) -> ToWorker:
    return _to_worker.decode(frame)


def decode_from_worker(frame: bytes) -> FromWorker:
    return _from_worker.decode(frame)
