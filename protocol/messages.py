"""Every message that crosses the gateway <-> worker boundary.

One DEALER (gateway) talks to one ROUTER (worker). Each ZeroMQ message is a
single frame holding one MessagePack-encoded struct from this module; the
``type`` tag selects the struct. Nothing here imports MLX or FastAPI: this
module is the whole contract between the two sides.

Gateway -> worker:  Hello, ChatRequest, Abort, ControlCall
Worker  -> gateway: WorkerInfo, ModelsChanged, StepOutputs, ControlReply, GoingAway
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .chat import ChatMessage

# Bump on any incompatible change; the gateway refuses workers that differ.
DEFAULT_WORKER_ENDPOINT = "tcp://127.0.0.1:5555"  # a worker binds it, a gateway dials it, unless told otherwise
PROTOCOL_VERSION = 6  # 4: typed chat messages, typed ping load; 5: RequestOutput.cache_decision (was started);
# 6: a worker serves several models (ChatRequest.model, WorkerInfo.models, ModelsChanged)


class _Msg(msgspec.Struct, tag_field="type", forbid_unknown_fields=False, omit_defaults=True):
    """Base for wire messages: tagged, tolerant of fields added later."""


# --------------------------------------------------------------------------- #
# Gateway -> worker
# --------------------------------------------------------------------------- #


class Hello(_Msg, tag="hello"):
    """First message on a new connection; answered with WorkerInfo."""

    protocol_version: int
    gateway_id: str


class SamplingParams(msgspec.Struct, omit_defaults=True):
    """What the client asked for. ``None`` means "not set": the worker fills
    it from the model's ``generation_config.json``, then from its own flags
    (worker/generation_config.py), so the gateway never guesses defaults."""

    # None: bounded by the context left after the prompt. 0: nothing is
    # generated; the one output reports the prompt's size (token counting).
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # 0 disables
    min_p: float | None = None
    repetition_penalty: float | None = None  # 1.0 disables
    presence_penalty: float | None = None  # OpenAI's definitions, over the completion so far
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit
    seed: int | None = None
    stop: list[str] = []
    ignore_eos: bool = False  # benchmarks: generate exactly max_tokens
    logprobs: bool = False  # each output token's log-probability
    top_logprobs: int = 0  # and this many alternatives per position (0-20)
    n: int = 1  # independent choices sharing one prompt prefill


class ToolChoice(msgspec.Struct, frozen=True, omit_defaults=True):
    """Whether the model may, must or must not call tools. ``function``:
    it must call exactly the tool named ``name``. ``required`` and
    ``function`` are enforced by constrained decoding."""

    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = None


class ResponseFormat(msgspec.Struct, frozen=True, omit_defaults=True):
    """The shape the answer must have, enforced token by token.
    ``json_object``: any JSON object; ``json_schema``: one matching ``schema``."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: dict[str, Any] | None = None
    name: str | None = None


class ChatRequest(_Msg, tag="chat"):
    """One generation. ``messages`` (protocol/chat.py), already validated by
    the gateway, are rendered with the model's chat template; media parts
    carry data URLs only. With ``prompt`` instead (``messages`` empty)
    the text or token ids are the model's input as they are (legacy
    completions): no template, and no ``<think>`` split of the output."""

    request_id: str
    messages: list[ChatMessage]
    sampling: SamplingParams
    model: str | None = None  # which of the worker's models (None: its default)
    prompt: str | list[int] | None = None
    suffix: str | None = None  # with a text ``prompt``: fill in the middle (models with FIM tokens)
    strip_thinking: bool = False
    conversation_id: str | None = None
    reset_conversation: bool = False
    # OpenAI-shaped function tools: {"type": "function", "function": {"name", "description", "parameters"}}
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice = ToolChoice()
    parallel_tool_calls: bool = True
    response_format: ResponseFormat = ResponseFormat()
    chat_template_kwargs: dict[str, Any] | None = None  # extra variables for the chat template
    reasoning_effort: str | None = None  # for templates that take it (or enable_thinking)
    # Seconds since the epoch after which the worker gives up (None: no deadline).
    deadline: float | None = None


class Abort(_Msg, tag="abort"):
    """Stop these requests; idempotent (unknown ids are ignored)."""

    request_ids: list[str]


ControlMethod = Literal[
    "ping", "stats", "conv_save", "conv_load", "conv_stats", "conv_delete", "tokenize", "detokenize",
    "model_load", "model_unload",
]


class ControlCall(_Msg, tag="control"):
    """A whitelisted out-of-band call. ``ping`` is answered by the compute
    loop, so a reply proves the loop is alive, not just the IO thread."""

    call_id: str
    method: ControlMethod
    args: dict[str, Any] = {}


# --------------------------------------------------------------------------- #
# Worker -> gateway
# --------------------------------------------------------------------------- #


class ModelInfo(msgspec.Struct, omit_defaults=True):
    """One model a worker can serve, and whether it is in memory."""

    id: str
    state: Literal["loaded", "loading", "unloaded", "failed"] = "loaded"
    context_length: int = 0  # 0: not known before the model was first loaded
    capabilities: list[str] = []  # e.g. ["chat", "vision"], once loaded
    size_bytes: int = 0  # in memory once loaded; before, its weights on disk (an estimate)
    error: str | None = None  # why the last load failed


class WorkerInfo(_Msg, tag="worker_info"):
    """Handshake reply: what this worker serves. ``model_id`` and
    ``context_length`` describe its default model (empty when it has none:
    a models-dir worker started without ``-m``); ``models`` lists all."""

    protocol_version: int
    worker_id: str
    model_id: str
    created: int  # worker start, epoch seconds (used as /v1/models `created`)
    context_length: int
    capabilities: list[str]  # e.g. ["chat", "vision"]
    max_running: int = 0
    max_queued: int = 0
    models: list[ModelInfo] = []
    world_size: int = 1  # processes (mlx.distributed ranks) serving the model together
    distributed_backend: str = ""  # their link: ring | jaccl | mpi; "" for one process


class ModelsChanged(_Msg, tag="models_changed"):
    """Sent to every gateway when a worker's models change: one loaded,
    unloaded, failed to load, or appeared in its models dir."""

    worker_id: str
    models: list[ModelInfo]


class WorkerLoad(msgspec.Struct, omit_defaults=True):
    running: int = 0
    waiting: int = 0
    kv_tokens: int = 0
    steps: int = 0  # monotonically increasing: a moving counter means alive


# How a request's prompt met the prompt cache (the X-Conv-KV header):
# fresh (new conversation), hit (its cached prefix reused), snapshot (an
# earlier saved state reused), reset (asked to start over), none (nothing
# reusable), disabled (no prompt cache for this request or worker).
CacheMode = Literal["fresh", "hit", "snapshot", "reset", "none", "disabled"]


class CacheDecision(msgspec.Struct, omit_defaults=True):
    """The worker's cache decision for a request (becomes X-Conv-* headers)."""

    mode: CacheMode = "none"
    cached_tokens: int = 0
    processing_tokens: int = 0


FinishReason = Literal["stop", "length", "abort", "error", "tool_calls"]


class ToolCallDelta(msgspec.Struct, omit_defaults=True):
    """A piece of one tool call. The first piece of a call carries ``id`` and
    ``name``; later pieces carry the next fragment of ``arguments``, a JSON
    object's text (all fragments of a call, joined, are that text).
    ``index`` numbers the calls of one choice from 0."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class TopLogprob(msgspec.Struct, array_like=True):
    token_id: int
    logprob: float
    token_bytes: bytes  # the token's raw bytes (may be part of a UTF-8 character)


class TokenLogprob(msgspec.Struct, array_like=True):
    """One generated token: its log-probability and, when asked for, the
    most likely alternatives at that position (after logit_bias, penalties
    and any grammar; before temperature and top_p/top_k)."""

    token_id: int
    logprob: float
    token_bytes: bytes
    top: list[TopLogprob] = []


class RequestOutput(msgspec.Struct, omit_defaults=True):
    """What one request produced during one compute step.

    The first output of a request carries ``cache_decision`` (and the
    prompt size), so the gateway can send headers before any token exists.
    The last carries ``finish_reason`` and ``usage`` (or ``error``).

    ``content``, ``reasoning``, ``tool_calls``, ``logprobs`` and ``tokens``
    belong to choice ``index``. With one choice its end is the request's
    ``finish_reason``; with ``n`` > 1 each choice's last output carries
    ``choice_finish_reason`` and the request ends with one more output.
    """

    request_id: str
    content: str = ""
    reasoning: str = ""
    tokens: int = 0  # new completion tokens in this step
    cache_decision: CacheDecision | None = None  # set on a request's first output only
    prompt_tokens: int = 0
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None
    stop_sequence: str | None = None  # the stop string that ended the request (final output)
    tool_calls: list[ToolCallDelta] | None = None
    logprobs: list[TokenLogprob] | None = None  # one per token of this output, when asked for
    index: int = 0  # the choice (n > 1)
    choice_finish_reason: FinishReason | None = None


class Usage(msgspec.Struct, omit_defaults=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    ttft_seconds: float = 0.0  # worker admission -> first token
    decode_seconds: float = 0.0  # first token -> last token
    queue_seconds: float = 0.0  # worker admission -> prefill start


class ErrorInfo(msgspec.Struct):
    """A request-level failure. ``status`` is the HTTP status the gateway
    should answer with when nothing has been streamed yet."""

    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    status: int = 400


class StepOutputs(_Msg, tag="outputs"):
    """All outputs of one compute step for one gateway, batched."""

    outputs: list[RequestOutput]
    load: WorkerLoad | None = None


class ControlReply(_Msg, tag="control_reply"):
    call_id: str
    ok: bool = True
    result: dict[str, Any] = {}
    error: ErrorInfo | None = None
    # Set on ``ping`` replies: gateways with nothing running on this worker
    # still learn its load (other gateways' requests) for routing.
    load: WorkerLoad | None = None


class GoingAway(_Msg, tag="going_away"):
    """Last words of a worker that is shutting down or crashing."""

    worker_id: str
    reason: str


ToWorker = Hello | ChatRequest | Abort | ControlCall
FromWorker = WorkerInfo | ModelsChanged | StepOutputs | ControlReply | GoingAway
