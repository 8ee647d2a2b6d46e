"""A bench-only worker that speaks the real protocol and does no compute.

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
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import zmq

from protocol import codec
from protocol.messages import (
    PROTOCOL_VERSION,
    Abort,
    CacheDecision,
    ChatRequest,
    ControlCall,
    ControlReply,
    Hello,
    RequestOutput,
    StepOutputs,
    Usage,
    WorkerInfo,
    WorkerLoad,
)

TOKEN = "tok "


@dataclass
class _Seq:
    gateway: bytes
    request: ChatRequest
    left: int
    done: int = 0
    started_at: float = 0.0


def serve(bind: str, step_rate: float, name: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(bind)
    print(f"listening on {sock.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    info = WorkerInfo(
        protocol_version=PROTOCOL_VERSION, worker_id=name, model_id="fake", created=int(time.time()),
        context_length=1 << 20, capabilities=["chat"], max_running=100_000, max_queued=100_000,
    )
    seqs: dict[str, _Seq] = {}
    steps = aborted = 0
    interval = 1.0 / step_rate if step_rate > 0 else 0.0
    next_step = time.perf_counter()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while True:
        wait_ms = 1000 if not seqs else max(0.0, (next_step - time.perf_counter()) * 1000)
        if poller.poll(int(wait_ms)):
            while True:
                try:
                    gateway, frame = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msg = codec.decode_to_worker(frame)
                if isinstance(msg, Hello):
                    sock.send_multipart([gateway, codec.encode(info)])
                elif isinstance(msg, ChatRequest):
                    n = msg.sampling.max_tokens or 16
                    seqs[msg.request_id] = _Seq(gateway, msg, n, started_at=time.perf_counter())
                    first = RequestOutput(msg.request_id, cache_decision=CacheDecision(mode="none"), prompt_tokens=1)
                    sock.send_multipart([gateway, codec.encode(StepOutputs(outputs=[first], load=_load(seqs, steps)))])
                elif isinstance(msg, Abort):
                    for rid in msg.request_ids:
                        aborted += seqs.pop(rid, None) is not None
                elif isinstance(msg, ControlCall):
                    if msg.method == "ping":
                        reply = ControlReply(msg.call_id, load=_load(seqs, steps))
                    else:
                        stats = {"worker_id": name, "model": "fake", "steps": steps, "running": len(seqs), "aborted": aborted}
                        reply = ControlReply(msg.call_id, result=stats)
                    sock.send_multipart([gateway, codec.encode(reply)])
        if not seqs or time.perf_counter() < next_step:
            continue
        next_step = max(next_step + interval, time.perf_counter() - interval)  # no burst after a stall
        steps += 1
        per_gateway: dict[bytes, list[RequestOutput]] = {}
        for rid, s in list(seqs.items()):
            s.left -= 1
            s.done += 1
            out = RequestOutput(rid, content=TOKEN, tokens=1)
            if s.left <= 0:
                out.finish_reason = "length"
                out.usage = Usage(prompt_tokens=1, completion_tokens=s.done, decode_seconds=time.perf_counter() - s.started_at)
                del seqs[rid]
            per_gateway.setdefault(s.gateway, []).append(out)
        load = _load(seqs, steps)
        for gateway, outs in per_gateway.items():
            try:
                sock.send_multipart([gateway, codec.encode(StepOutputs(outputs=outs, load=load))], zmq.NOBLOCK)
            except zmq.ZMQError:  # that gateway is gone: drop its requests
                for o in outs:
                    seqs.pop(o.request_id, None)


def _load(seqs: dict[str, _Seq], steps: int) -> WorkerLoad:
    return WorkerLoad(running=len(seqs), steps=steps)


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
