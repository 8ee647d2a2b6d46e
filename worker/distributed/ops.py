"""Every message rank 0 sends the other ranks, as typed structs.

Rank 0 queues ops as its scheduler acts and sends them together (``Ops``)
before anything that needs the other ranks: a batch step, an agreement, a
heartbeat. A follower applies them in order, so its batch and its share of
the prompt cache go through exactly rank 0's states.

KV states are never sent, only named: the n-th state a batch op produced
(``StateRef``: a sequence's cache at its end or now), the n-th cache file
loaded (``FileRef``), or the prompt-cache entry holding some tokens
(``TreeRef``). Each rank resolves a name against its own share.
"""

from __future__ import annotations

import msgspec


class _Op(msgspec.Struct, tag_field="op", array_like=True):
    """Base: tagged, compact (fields by position)."""


# ---- where a cache comes from --------------------------------------------- #
class StateRef(msgspec.Struct, tag="state", array_like=True, frozen=True):
    """The ``id``-th KV state a batch op produced, cut back to ``length`` tokens (forks)."""

    id: int
    length: int | None = None


class FileRef(msgspec.Struct, tag="file", array_like=True, frozen=True):
    """The ``id``-th cache this rank loaded from its files."""

    id: int


class TreeRef(msgspec.Struct, tag="tree", array_like=True, frozen=True):
    """The prompt-cache entry holding exactly ``tokens``."""

    tokens: list[int]


CacheRef = StateRef | FileRef | TreeRef


# ---- start-up --------------------------------------------------------------- #
class Hello(_Op, tag="hello"):
    """Every rank must serve the same model the same way (checked, agreed)."""

    model_id: str
    tokenizer_hash: str
    config_hash: str
    parallelism: str
    max_running: int  # the batch's shape: every rank's must match rank 0's
    prefill_chunk: int


class Forward(_Op, tag="forward"):
    """A forward pass outside the batch (the model's cache layout, a
    warm-up): every rank runs it on a fresh cache."""

    tokens: list[list[int]]


# ---- the batch -------------------------------------------------------------- #
class Add(_Op, tag="add"):
    """A sequence joins the batch as ``uid``: ``tokens`` to prefill on top of
    ``cache``, pausing at ``pauses`` (offsets into ``tokens``). Its budget and
    stop rule are rank 0's, so every rank's batch ends it at the same step."""

    uid: int
    tokens: list[int]
    pauses: list[int]
    cache: CacheRef | None
    max_tokens: int
    stop_on_eos: bool


class Step(_Op, tag="step"):
    """One batch step (a prefill chunk and a decode step). Each sequence it
    ends gets the next state id (its final state), in the step's order."""


class Extract(_Op, tag="extract"):
    """A running sequence's state now (the next state id)."""

    uid: int


class Remove(_Op, tag="remove"):
    """Take sequences out; with ``keep_state`` each one's state is the next id, in order."""

    uids: list[int]
    keep_state: bool


# ---- the prompt cache (worker/kv) ------------------------------------------ #
class TreeInsert(_Op, tag="tree_insert"):
    tokens: list[int]
    source: StateRef | FileRef


class TreeDrop(_Op, tag="tree_drop"):
    """Evict the entry ending at ``tokens`` (or only its checkpoint): rank 0 decided."""

    tokens: list[int]
    state_only: bool


class TreeClear(_Op, tag="tree_clear"):
    pass


class PrefixLoad(_Op, tag="prefix_load"):
    """Load the system prefix ``tokens`` from this rank's files (then agree)."""

    tokens: list[int]


class PrefixSave(_Op, tag="prefix_save"):
    """Save the prompt-cache entry ``tokens`` as a system prefix (then agree)."""

    tokens: list[int]


class PrefixRemove(_Op, tag="prefix_remove"):
    digest: str


class ConvSave(_Op, tag="conv_save"):
    """Save the conversation entry ``meta["tokens"]`` as ``stem`` with ``meta`` (then agree)."""

    stem: str
    meta: dict


class ConvLoad(_Op, tag="conv_load"):
    """Load ``stem``; it must carry rank 0's ``save_id`` (then agree)."""

    stem: str
    save_id: str | None


class ConvDelete(_Op, tag="conv_delete"):
    stem: str


class ConvQuarantine(_Op, tag="conv_quarantine"):
    stem: str


# ---- liveness --------------------------------------------------------------- #
class Heartbeat(_Op, tag="heartbeat"):
    """Rank 0 is alive and idle."""


class Shutdown(_Op, tag="shutdown"):
    reason: str


Op = (
    Hello | Forward | Add | Step | Extract | Remove | TreeInsert | TreeDrop | TreeClear
    | PrefixLoad | PrefixSave | PrefixRemove | ConvSave | ConvLoad | ConvDelete | ConvQuarantine | Heartbeat | Shutdown
)

# Ops after which rank 0 and the followers take part in an agreement (Channel.agree).
AGREED = (Hello, PrefixLoad, PrefixSave, ConvSave, ConvLoad)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[Op])


def encode(ops: list[Op]) -> bytes:
    return _encoder.encode(ops)


def decode(payload: bytes) -> list[Op]:
    return _decoder.decode(payload)
