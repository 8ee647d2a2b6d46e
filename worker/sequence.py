"""One admitted request as the worker tracks it, from prompt to final output."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from protocol.messages import CacheDecision, ChatRequest, ErrorInfo, FinishReason, RequestOutput, TokenLogprob, Usage

from .batch import KVState
from .generation_config import Sampling
from .kv.manager import Plan
from .prompt import Prompt
from .text_stream import TextStream


@dataclass
class Sequence:
    request: ChatRequest
    gateway: bytes  # ZeroMQ identity of the gateway that sent it
    prompt: Prompt
    sampling: Sampling
    detokenizer: Any
    text: TextStream
    max_tokens: int
    cache_decision: CacheDecision  # how the prompt met the prompt cache (announced with the first output)
    uid: int = -1  # its id in the running batch (worker/batch.py) once inserted
    kv_length: int = 0  # prompt tokens in its KV so far (cached + prefilled)
    arrived: float = field(default_factory=time.perf_counter)
    prefill_started: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    completion_tokens: int = 0
    announced: bool = False
    finished: bool = False
    plan: Plan | None = None  # the prompt-cache plan; None without a prompt cache
    constraint: Any = None  # a grammar.GrammarProcessor when the output must follow a grammar
    logprobs: list[TokenLogprob] = field(default_factory=list)  # read, not yet sent
    final_state: KVState | None = None  # tokens and KV cache at a normal finish
    choice: int = 0  # which of the request's n choices
    choices: Any = None  # choices.Choices when n > 1

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def output(self, content: str = "", reasoning: str = "", tokens: int = 0) -> RequestOutput:
        """An output for this step; the first one also announces the cache decision."""
        out = RequestOutput(request_id=self.request_id, content=content, reasoning=reasoning, tokens=tokens, index=self.choice)
        calls = self.text.take_calls()
        if calls:
            out.tool_calls = calls
        if self.logprobs:
            out.logprobs, self.logprobs = self.logprobs, []
        if not self.announced:
            out.cache_decision = self.cache_decision
            out.prompt_tokens = len(self.prompt.token_ids)
            self.announced = True
        return out

    def final(
        self,
        reason: FinishReason,
        content: str = "",
        reasoning: str = "",
        tokens: int = 0,
        error: ErrorInfo | None = None,
    ) -> RequestOutput:
        """The last output of a request (of one choice, with n > 1). Every
        request ends through here."""
        self.finished = True
        out = self.output(content, reasoning, tokens)
        # A reply that called tools ends with "tool_calls" (OpenAI), unless cut short.
        reason = "tool_calls" if reason == "stop" and self.text.saw_calls else reason
        out.stop_sequence = self.text.stop.matched
        group = self.choices
        if group is None:
            out.finish_reason, out.error, out.usage = reason, error, self.usage()
            return out
        out.choice_finish_reason = reason
        group.finished += 1
        if group.finished >= group.n or error is not None or reason == "abort":
            out.finish_reason, out.error, out.usage = reason, error, group.usage()
        return out

    def usage(self) -> Usage:
        first = self.first_token_at
        return Usage(
            prompt_tokens=len(self.prompt.token_ids),
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cache_decision.cached_tokens,
            ttft_seconds=(first - self.arrived) if first else 0.0,
            decode_seconds=(self.last_token_at - first) if first and self.last_token_at else 0.0,
            queue_seconds=((self.prefill_started or time.perf_counter()) - self.arrived),
        )


def ended_unstarted(request_id: str, error: ErrorInfo | None, arrived: float, cache_decision: CacheDecision) -> RequestOutput:
    """The last output of a request aborted (or failed) before it was
    admitted to the batch, e.g. while its prompt or media was prepared."""
    return RequestOutput(
        request_id=request_id,
        cache_decision=cache_decision,
        finish_reason="error" if error else "abort",
        error=error,
        usage=Usage(queue_seconds=time.perf_counter() - arrived),
    )


def rejection(request_id: str, error: ErrorInfo) -> RequestOutput:
    """The only output of a request refused at admission."""
    return RequestOutput(
        request_id=request_id,
        cache_decision=CacheDecision(mode="none"),
        finish_reason="error",
        error=error,
        usage=Usage(),
    )


def prompt_only(request_id: str, prompt_tokens: int) -> RequestOutput:
    """The only output of a request that asked for no tokens (``max_tokens``
    0): the prompt's size, for token counting. Nothing was computed."""
    return RequestOutput(
        request_id=request_id,
        cache_decision=CacheDecision(mode="none", processing_tokens=0),
        prompt_tokens=prompt_tokens,
        finish_reason="length",
        usage=Usage(prompt_tokens=prompt_tokens),
    )
