"""A worker that speaks the real protocol and does no compute.

It answers the handshake, pings and stats like a worker, and "generates"
one token per running request per step, batched into one ``StepOutputs``
per gateway per step exactly as ``worker/engine.py`` does. With it the
gateway's own cost can be measured: the tokens/s one gateway process can
stream when the worker is never the bottleneck.

    python -m bench.fake_worker --bind tcp://127.0.0.1:5599 --step-rate 1000

``--step-rate 0`` steps as fast as it can (the gateway then coalesces).
Tests use it where the pace matters (a stream that must still be running
when the client leaves): the pace is the step rate, not the CPU's speed.
``--bind tcp://127.0.0.1:0`` picks a free port; the endpoint is printed.

``FakeWorker`` is the protocol logic without a socket or a clock; ``serve``
drives it here, and the in-process tests drive it on their own event loop
(tests/support/fake_worker.py), stepping when the test says so.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import zmq

from protocol import codec
from protocol.messages import (
    PROTOCOL_VERSION,
    Abort,
    CacheDecision,
    ChatRequest,
    ControlCall,
    ControlReply,
    ErrorInfo,
    Hello,
    RequestOutput,
    StepOutputs,
    Usage,
    WorkerInfo,
    WorkerLoad,
)

TOKEN = "tok "

Reply = tuple[bytes, msgspec.Struct]  # (gateway identity, message)


@dataclass
class _Seq:
    gateway: bytes
    request: ChatRequest
    left: int
    prompt_tokens: int
    done: int = 0
    started_at: float = 0.0


class FakeWorker:
    """What a worker says to its gateways, with no model behind it.

    ``handle`` answers one incoming message, ``step`` produces one step's
    outputs; both return the messages to send. The attributes below let a
    test make it misbehave like a real worker can.
    """

    def __init__(
        self,
        name: str,
        *,
        model_id: str = "fake",
        context_length: int = 1 << 20,
        max_running: int = 100_000,
        max_queued: int = 100_000,
        protocol_version: int = PROTOCOL_VERSION,
    ):
        self.info = WorkerInfo(
            protocol_version=protocol_version, worker_id=name, model_id=model_id, created=int(time.time()),
            context_length=context_length, capabilities=["chat"],
            max_running=max_running, max_queued=max_queued,
        )
        self.seqs: dict[str, _Seq] = {}
        self.steps = 0
        self.aborted = 0  # requests stopped by an Abort (tests read it through stats)
        self.token = TOKEN
        self.answer_pings = True  # False: a hung compute loop (the handshake is still answered)
        self.refuse: Callable[[ChatRequest], ErrorInfo | None] = lambda _req: None  # admission errors
        self.controls: dict[str, Callable[[dict], dict]] = {}  # extra control calls (conv_*), by method

    def handle(self, gateway: bytes, msg: msgspec.Struct) -> list[Reply]:
        if isinstance(msg, Hello):
            return [(gateway, self.info)]
        if isinstance(msg, ChatRequest):
            return [(gateway, StepOutputs(outputs=[self._admit(gateway, msg)], load=self.load()))]
        if isinstance(msg, Abort):
            for rid in msg.request_ids:
                self.aborted += self.seqs.pop(rid, None) is not None
            return []
        if isinstance(msg, ControlCall):
            return self._control(gateway, msg)
        return []

    def _admit(self, gateway: bytes, req: ChatRequest) -> RequestOutput:
        error = self.refuse(req)
        if error is not None:
            return RequestOutput(req.request_id, cache_decision=CacheDecision(mode="none"), finish_reason="error", error=error, usage=Usage())
        prompt = max(1, sum(len(str(m.content or "")) for m in req.messages))  # characters as "tokens"
        self.seqs[req.request_id] = _Seq(gateway, req, req.sampling.max_tokens or 16, prompt, started_at=time.perf_counter())
        return RequestOutput(req.request_id, cache_decision=CacheDecision(mode="none", processing_tokens=prompt), prompt_tokens=prompt)

    def _control(self, gateway: bytes, call: ControlCall) -> list[Reply]:
        if call.method == "ping":
            if not self.answer_pings:
                return []
            return [(gateway, ControlReply(call.call_id, load=self.load()))]
        elif call.method in self.controls:
            result = self.controls[call.method](call.args)
        elif call.method == "stats":
            result = {
                "worker_id": self.info.worker_id, "model": self.info.model_id, "steps": self.steps,
                "running": len(self.seqs), "aborted": self.aborted,
            }
        else:
            err = ErrorInfo(f"unknown control call {call.method}", status=404)
            return [(gateway, ControlReply(call.call_id, ok=False, error=err))]
        return [(gateway, ControlReply(call.call_id, result=result))]

    def step(self) -> list[Reply]:
        """One token for every running request: one message per gateway."""
        if not self.seqs:
            return []
        self.steps += 1
        per_gateway: dict[bytes, list[RequestOutput]] = {}
        for rid, s in list(self.seqs.items()):
            s.left -= 1
            s.done += 1
            out = RequestOutput(rid, content=self.token, tokens=1)
            if s.left <= 0:
                out.finish_reason = "length"
                out.usage = Usage(prompt_tokens=s.prompt_tokens, completion_tokens=s.done, decode_seconds=time.perf_counter() - s.started_at)
                del self.seqs[rid]
            per_gateway.setdefault(s.gateway, []).append(out)
        load = self.load()
        return [(gateway, StepOutputs(outputs=outs, load=load)) for gateway, outs in per_gateway.items()]

    def drop_gateway(self, gateway: bytes) -> None:
        """That gateway is gone: forget its requests (as the engine aborts them)."""
        for rid in [rid for rid, s in self.seqs.items() if s.gateway == gateway]:
            del self.seqs[rid]

    def load(self) -> WorkerLoad:
        return WorkerLoad(running=len(self.seqs), steps=self.steps)


def serve(bind: str, step_rate: float, name: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(bind)
    print(f"listening on {sock.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    fake = FakeWorker(name)
    interval = 1.0 / step_rate if step_rate > 0 else 0.0
    next_step = time.perf_counter()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)

    def send(replies: list[Reply]) -> None:
        for gateway, msg in replies:
            try:
                sock.send_multipart([gateway, codec.encode(msg)], zmq.NOBLOCK)
            except zmq.ZMQError:  # that gateway is gone: drop its requests
                fake.drop_gateway(gateway)

    while True:
        wait_ms = 1000 if not fake.seqs else max(0.0, (next_step - time.perf_counter()) * 1000)
        if poller.poll(int(wait_ms)):
            while True:
                try:
                    gateway, frame = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                send(fake.handle(gateway, codec.decode_to_worker(frame)))
        if not fake.seqs or time.perf_counter() < next_step:
            continue
        next_step = max(next_step + interval, time.perf_counter() - interval)  # no burst after a stall
        send(fake.step())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fake_worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bind", required=True)
    p.add_argument("--step-rate", type=float, default=1000.0, help="steps per second (each: one token per running request); 0: unpaced")
    p.add_argument("--name", default=f"fake-{os.getpid()}")
    args = p.parse_args(argv)
    try:
        serve(args.bind, args.step_rate, args.name)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
