"""The worker's compute side in-process: a scheduler on a loaded model, and
the engine's loop run on this thread with a transport that records sends.

No sockets, no threads of our own: the test drives everything, and every
wait is bounded (steps for the scheduler, a timer for the engine loop).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from protocol.chat import chat_messages
from protocol.messages import (
    PROTOCOL_VERSION,
    ChatRequest,
    RequestOutput,
    SamplingParams,
    StepOutputs,
    WorkerInfo,
)
from worker.engine import Engine
from worker.grammar import GrammarCompiler
from worker.kv.conversations import ConversationLimits
from worker.kv.manager import KVConfig, PromptCacheManager
from worker.model_host import ModelHost
from worker.models.loaded import LoadedModel
from worker.scheduler import Scheduler, SchedulerLimits
from worker.transport import GatewayGone, InboxItem, Incoming, Wake

GATEWAY = b"gw-a"
RENDER_WAIT = 30.0  # seconds the prompt thread may take to render one test prompt


def chat(
    request_id: str,
    text: str = "Tell me a story",
    *,
    system: str | None = None,
    history: list[dict[str, Any]] | None = None,
    conversation_id: str | None = None,
    **sampling: Any,
) -> ChatRequest:
    """A chat request; greedy and short unless ``sampling`` says otherwise."""
    plain = ([{"role": "system", "content": system}] if system else []) + list(history or [])
    plain.append({"role": "user", "content": text})
    messages = chat_messages(plain)  # typed, as the gateway sends them
    params: dict[str, Any] = {"temperature": 0.0, "max_tokens": 8, **sampling}
    deadline = params.pop("deadline", None)
    return ChatRequest(request_id, messages, SamplingParams(**params), conversation_id=conversation_id, deadline=deadline)


def make_kv(root: Path, loaded: LoadedModel, **config: Any) -> PromptCacheManager:
    """A prompt cache under ``root``; no system-prompt files unless ``prefix_enabled=True``."""
    settings: dict[str, Any] = {"prefix_enabled": False, "limits": ConversationLimits(max_tokens=loaded.context_length), **config}
    kv_config = KVConfig(prefix_dir=root / "prefix", disk_dir=root / "conversations", **settings)
    return PromptCacheManager(kv_config, model_id=loaded.model_id, tokenizer_hash="test")


_grammars: dict[int, GrammarCompiler] = {}


def make_scheduler(
    loaded: LoadedModel, *, kv: PromptCacheManager | None = None, context_length: int | None = None, **limits: Any
) -> Scheduler:
    # One grammar compiler per tokenizer for the whole run: it holds nothing
    # per request, and building one costs about a second of CPU.
    grammars = _grammars.get(id(loaded.tokenizer))
    if grammars is None:
        grammars = _grammars[id(loaded.tokenizer)] = GrammarCompiler(loaded.tokenizer)
    return Scheduler(
        loaded.model,
        loaded.tokenizer,
        model_id=loaded.model_id,
        context_length=context_length or loaded.context_length,
        limits=SchedulerLimits(**{"max_running": 4, "prefill_chunk": 64, **limits}),
        kv=kv,
        grammars=grammars,
    )


@dataclass
class Finished:
    """Everything one request produced, in order."""

    outputs: list[RequestOutput] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(o.content for o in self.outputs)

    @property
    def final(self) -> RequestOutput:
        assert self.outputs and self.outputs[-1].finish_reason is not None, self.outputs[-1:]
        return self.outputs[-1]


def run_to_end(
    scheduler: Scheduler, firsts: Iterable[RequestOutput | None], *, max_steps: int = 2000, timeout: float = RENDER_WAIT
) -> dict[str, Finished]:
    """Step until no work is left (at most ``max_steps``); outputs by request id,
    starting with each request's admission output. A request whose admission
    said None (parked behind a running prefix, or rendering on the prompt
    thread) gets its first output from a later step; a prompt still
    rendering is waited for, up to ``timeout``."""
    results = {o.request_id: Finished([o]) for o in firsts if o is not None}
    deadline = time.monotonic() + timeout
    steps = 0
    while steps < max_steps:
        if not scheduler.has_work:
            if not scheduler._rendering:
                return results
            assert time.monotonic() < deadline, f"prompts still rendering after {timeout}s: {list(scheduler._rendering)}"
            time.sleep(0.005)
            continue
        steps += 1
        for out in scheduler.step():
            results.setdefault(out.request_id, Finished()).outputs.append(out)
    raise AssertionError(f"still working after {max_steps} steps")


def generate(scheduler: Scheduler, req: ChatRequest, client: bytes = GATEWAY) -> Finished:
    first = scheduler.admit(client, req)
    if first is not None and first.finish_reason is not None:
        return Finished([first])
    return run_to_end(scheduler, [first])[req.request_id]


def assert_idle(scheduler: Scheduler) -> None:
    """Nothing left behind: no sequence, no retired state, no prompt still rendering."""
    assert scheduler._rendering == {}
    assert (scheduler.running, scheduler.waiting, scheduler.kv_tokens(), scheduler.has_work) == (0, 0, 0, False)
    assert scheduler._by_id == {} and scheduler._by_uid == {} and scheduler._retired == {}


# --------------------------------------------------------------------------- #
# The engine's loop
# --------------------------------------------------------------------------- #


class RecordingTransport:
    """Stands in for worker.transport.Transport: records what the engine sends
    and lets the test react to each send (it runs on the engine's thread)."""

    def __init__(self, info: WorkerInfo):
        self.info = info
        self.sent: list[tuple[bytes | None, msgspec.Struct]] = []
        self.on_send: Callable[[bytes | None, msgspec.Struct], None] = lambda _client, _msg: None

    def send(self, client: bytes | None, msg: msgspec.Struct) -> None:
        self.sent.append((client, msg))
        self.on_send(client, msg)

    def outputs(self, client: bytes | None = None) -> list[RequestOutput]:
        return [o for c, m in self.sent if isinstance(m, StepOutputs) and client in (None, c) for o in m.outputs]

    def of(self, request_id: str) -> list[RequestOutput]:
        return [o for o in self.outputs() if o.request_id == request_id]

    def final(self, request_id: str) -> RequestOutput | None:
        return next((o for o in self.of(request_id) if o.finish_reason is not None), None)


def worker_info(loaded: LoadedModel) -> WorkerInfo:
    return WorkerInfo(
        protocol_version=PROTOCOL_VERSION, worker_id="test-worker", model_id=loaded.model_id, created=0,
        context_length=loaded.context_length, capabilities=["chat"],
    )


class EngineHarness:
    """An Engine whose loop runs on the test's thread until a condition holds."""

    def __init__(self, scheduler: Scheduler, loaded: LoadedModel):
        self.inbox: queue.Queue[InboxItem] = queue.Queue()
        self.transport = RecordingTransport(worker_info(loaded))
        host = ModelHost(build=lambda _loaded: (scheduler, ""))  # one model, as a worker started with -m
        host.add_loaded(loaded, pinned=True)
        self.engine = Engine(host, self.transport, self.inbox)  # type: ignore[arg-type]
        self.scheduler = scheduler
        scheduler.set_wake(lambda: self.inbox.put(Wake("job done")))  # as worker/cli.py wires it

    def put(self, msg: msgspec.Struct, client: bytes = GATEWAY) -> None:
        self.inbox.put(Incoming(client, msg))

    def gone(self, client: bytes) -> None:
        self.inbox.put(GatewayGone(client))

    def run(self, until: Callable[[], bool], *, timeout: float = 60.0, react: Callable[[bytes | None, msgspec.Struct], None] | None = None) -> None:
        """Run ``Engine.run`` here until ``until()`` holds after a send, or the
        loop returns by itself (a drain). ``react`` sees every send first. A
        timer stops the loop at ``timeout`` and the test fails."""
        engine = self.engine

        def on_send(client: bytes | None, msg: msgspec.Struct) -> None:
            if react is not None:
                react(client, msg)
            if until():
                engine.stop(drain=False)

        self.transport.on_send = on_send
        timer = threading.Timer(timeout, lambda: engine.stop(drain=False))
        timer.daemon = True
        timer.start()
        try:
            engine._stop = False  # each run() of the harness is a fresh turn of the loop
            engine.run()
        finally:
            timer.cancel()
            self.transport.on_send = lambda _client, _msg: None
        assert until(), f"the engine loop did not get there within {timeout}s; sent: {self.transport.sent[-5:]}"
