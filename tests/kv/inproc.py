"""In-process scheduler runs for the prompt-cache tests: a real model, a
real Scheduler and PromptCacheManager, no sockets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.chat import chat_messages
from protocol.messages import ChatRequest, RequestOutput, SamplingParams
from tests.support import worker_harness as harness
from worker.kv.manager import PromptCacheManager
from worker.scheduler import Scheduler

GATEWAY = b"gw"


def make_kv(root: Path, loaded: Any, **config: Any) -> PromptCacheManager:
    return harness.make_kv(root, loaded, **{"prefix_enabled": True, **config})


def make_scheduler(loaded: Any, kv: PromptCacheManager | None, **limits: Any) -> Scheduler:
    return harness.make_scheduler(loaded, kv=kv, **{"max_running": 8, "prefill_chunk": 32, **limits})


def request(rid: str, messages: list[dict], *, max_tokens: int = 8, conversation: str | None = None, **extra: Any) -> ChatRequest:
    return ChatRequest(
        request_id=rid, messages=chat_messages(messages), sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0),
        conversation_id=conversation, **extra,
    )


@dataclass
class Result(harness.Finished):
    first: RequestOutput | None = None  # the output that carried the cache decision

    @property
    def cached(self) -> int:
        assert self.first is not None and self.first.cache_decision is not None
        return self.first.cache_decision.cached_tokens

    @property
    def mode(self) -> str:
        assert self.first is not None and self.first.cache_decision is not None
        return self.first.cache_decision.mode


def run(scheduler: Scheduler, requests: list[ChatRequest], *, max_steps: int = 5000) -> dict[str, Result]:
    """Admit every request at once, then step until all have finished."""
    results: dict[str, Result] = {}
    for req in requests:
        r = results[req.request_id] = Result()
        out = scheduler.admit(GATEWAY, req)
        if out is not None:
            r.first = out
            r.outputs.append(out)
    for _ in range(max_steps):
        if all(r.outputs and r.outputs[-1].finish_reason for r in results.values()):
            return results
        for out in scheduler.step():
            r = results[out.request_id]
            if r.first is None:
                r.first = out
            r.outputs.append(out)
    raise AssertionError(f"not finished after {max_steps} steps")


def generate(scheduler: Scheduler, req: ChatRequest) -> Result:
    return run(scheduler, [req])[req.request_id]
