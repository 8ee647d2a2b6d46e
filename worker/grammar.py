"""Constrained decoding: a grammar per request, enforced token by token.

llguidance (Microsoft's grammar engine, also behind mlx-vlm's and vLLM's
structured outputs) compiles a JSON schema or a Lark grammar against this
model's tokenizer and computes, per step, the set of tokens that keep the
output inside the grammar. ``GrammarProcessor`` applies that set as a
logits mask to one sequence of mlx-lm's batch; the other sequences in the
batch are untouched. It computes masks on the CPU with numpy and applies
them with plain MLX ops, so it runs on every backend (llguidance's own MLX
helper is a Metal kernel).

Used for ``response_format`` (json_object, json_schema) and for
``tool_choice`` required or named, where the grammar is the family's call
format around each tool's argument schema. JSON is compact with fixed
separators (", " and ": "), so a weak model cannot loop on whitespace.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import Any, cast

import mlx.core as mx
import numpy as np

from protocol.messages import ResponseFormat

from .tool_format import ToolPlan

log = logging.getLogger("kmlx.worker.grammar")

# Forced parallel calls stop here: a weak model must not call tools forever.
MAX_PARALLEL_CALLS = 16
# No free whitespace: a weak model cannot fill its budget with newlines.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ValueError):
    """A format or schema that cannot be enforced; shown to the client (400)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def answer_schema(fmt: ResponseFormat) -> dict[str, Any]:
    return fmt.schema if fmt.type == "json_schema" and fmt.schema is not None else {"type": "object"}


def response_format_grammar(fmt: ResponseFormat) -> str:
    """The llguidance grammar for ``response_format`` (json_object or json_schema)."""
    from llguidance import LLMatcher

    schema = answer_schema(fmt)
    try:
        return LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)  # type: ignore[arg-type]
    except ValueError as exc:
        raise GrammarError(f"response_format: the schema is not valid: {exc}", "response_format") from None


def marker_tokens(tokenizer: Any, markers: list[str]) -> dict[str, int]:
    """Call markers that are one added token of this vocabulary (Qwen's
    ``<tool_call>``): the grammar must ask for that token, not its spelling."""
    inner = getattr(tokenizer, "_tokenizer", tokenizer)
    added = set(getattr(inner, "get_added_vocab", dict)().values())
    out: dict[str, int] = {}
    for m in markers:
        ids = tokenizer.encode(m, add_special_tokens=False) if m else []
        if len(ids) == 1 and ids[0] in added:
            out[m] = ids[0]
    return out


def _literal(text: str, tokens: dict[str, int]) -> str:
    return f"<[{tokens[text]}]>" if text in tokens else json.dumps(text)


def tool_call_grammar(plan: ToolPlan, answer: dict[str, Any] | None = None, tokens: dict[str, int] | None = None) -> str:
    """A grammar for one call (named tool, or parallel calls not allowed) or
    one or more calls, each in the family's format with its tool's schema.
    ``answer``: a JSON schema the reply may match instead of calling
    (``response_format`` with ``tool_choice`` auto). ``tokens``: markers
    that are single tokens (``marker_tokens``)."""
    from llguidance import LLMatcher

    tools = [t["function"] for t in plan.tools if plan.choice.mode != "function" or t["function"]["name"] == plan.choice.name]
    key = "parameters" if plan.format.family == "llama3" else "arguments"
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t["name"]}, key: t.get("parameters") or {"type": "object"}},
            "required": ["name", key],
            "additionalProperties": False,
        }
        for t in tools
    ]
    call_schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    call_schema = {**call_schema, "x-guidance": JSON_OPTIONS}
    body = f"%json {json.dumps(call_schema)}"
    if plan.format.family == "llama3":
        call, sep = f"call: {body}", '"; "'
    elif plan.format.family == "hermes":
        start, end = _literal(plan.format.start, tokens or {}), _literal(plan.format.end, tokens or {})
        call, sep = f'call: {start} "\\n" {body} "\\n" {end}', r'"\n"'
    else:  # kmlx's fallback format
        call, sep = f"call: {_literal(plan.format.start, tokens or {})} {body} {_literal(plan.format.end, tokens or {})}", r'"\n"'
    many = plan.parallel and plan.choice.mode != "function"
    calls = f"call ({sep} call){{0,{MAX_PARALLEL_CALLS - 1}}}" if many else "call"
    if answer is not None:
        return LLMatcher.grammar_from_lark(f"start: answer | {calls}\nanswer: %json {json.dumps({**answer, 'x-guidance': JSON_OPTIONS})}\n{call}\n")
    return LLMatcher.grammar_from_lark(f"start: {calls}\n{call}\n")


class GrammarCompiler:
    """Compiles grammars against this worker's tokenizer; the compiled
    matchers are cached per grammar (least recently used first out) and each
    sequence gets a cheap copy. The llguidance tokenizer (~2 s to build) is
    made on a thread at start-up, so the first constrained request rarely waits."""

    def __init__(self, tokenizer: Any, *, cache_size: int = 64):
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_lock = threading.Lock()  # the compute loop and the prompt thread both compile
        self._llg: Any = None
        self._error: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._build, args=(tokenizer,), name="kmlx-grammar-tokenizer", daemon=True).start()

    def _build(self, tokenizer: Any) -> None:
        try:
            import llguidance.hf

            hf = getattr(tokenizer, "_tokenizer", tokenizer)
            self._llg = llguidance.hf.from_tokenizer(hf, eos_token=sorted(tokenizer.eos_token_ids))
        except Exception as exc:  # e.g. a slow (Python) tokenizer: constrained requests get a 400
            self._error = f"this model's tokenizer cannot drive constrained decoding ({exc})"
            log.warning("%s", self._error)
        finally:
            self._ready.set()

    def peek(self) -> Any | None:
        """llguidance's tokenizer if it is built, without waiting."""
        return self._llg if self._ready.is_set() else None

    def tokenizer(self, param: str) -> Any:
        self._ready.wait()
        if self._llg is None:
            raise GrammarError(self._error or "constrained decoding is unavailable", param)
        return self._llg

    def matcher(self, grammar: str, param: str) -> Any:
        """A fresh matcher for ``grammar``; raises GrammarError naming what it cannot enforce."""
        from llguidance import LLMatcher

        tok = self.tokenizer(param)
        with self._cache_lock:
            pristine = self._cache.get(grammar)
            if pristine is not None:
                self._cache.move_to_end(grammar)
        if pristine is None:  # compiled outside the lock: a long compile holds up no other thread
            is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, tok)
            if is_error:
                raise GrammarError(f"{param}: cannot be enforced: {messages[0] if messages else 'invalid grammar'}", param)
            pristine = LLMatcher(tok, grammar)
            if pristine.is_error():
                raise GrammarError(f"{param}: cannot be enforced: {pristine.get_error()}", param)
            with self._cache_lock:
                self._cache[grammar] = pristine
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return pristine.deep_copy()


class GrammarProcessor:
    """The logits processor of one constrained sequence.

    mlx-lm calls it with the sequence's token history before sampling each
    token; the newest tokens since the last call are fed to the matcher
    (this reads them back from the device, a sync the unconstrained path
    does not need), then every token the grammar forbids gets -inf. With
    ``gate`` (a prompt that opened a ``<think>`` block) the grammar starts
    only after the model wrote that text."""

    def __init__(self, matcher: Any, tokenizer: Any, *, gate: bytes | None = None):
        self.matcher = matcher
        self.tokenizer = tokenizer
        self.gate = gate
        self._tail = b""
        self._seen: int | None = None
        self._words = np.zeros(((tokenizer.vocab_size + 31) // 32,), dtype=np.int32)
        self._mask: mx.array | None = None

    def _advance(self, token: int) -> None:
        if self.gate is not None:
            self._tail = (self._tail + self.tokenizer.decode_bytes([token]))[-len(self.gate) - 16 :]
            if self._tail.endswith(self.gate):
                self.gate = None
            return
        if not self.matcher.consume_token(token):
            log.warning("grammar refused token %d: %s", token, self.matcher.get_error())

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        n = tokens.size
        if self._seen is not None and n > self._seen:
            for t in cast(list[int], tokens[self._seen - n :].tolist()):
                self._advance(int(t))
        self._seen = n
        if self.gate is not None:
            return logits
        vocab = logits.shape[-1]
        if self.matcher.is_error():  # cannot happen while masks are applied; end cleanly if it does
            allowed = np.zeros(vocab, dtype=np.bool_)
            allowed[[t for t in self.tokenizer.eos_tokens if t < vocab]] = True
        else:
            self.matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
            bits = np.unpackbits(self._words.view(np.uint8), bitorder="little").astype(np.bool_)
            allowed = bits[:vocab] if bits.size >= vocab else np.pad(bits, (0, vocab - bits.size))
        return mx.where(mx.array(allowed), logits, mx.array(-float("inf"), dtype=logits.dtype))
