"""What each API's translation costs the gateway, side by side.

One gateway in front of ``bench/fake_worker.py`` (the real protocol, no
compute, unpaced: the gateway is the bottleneck), the same load through
chat completions, Anthropic messages, Responses and legacy completions,
streamed and whole. Reported: tokens/s reaching the clients, the gateway's
CPU time per 1,000 tokens (the number that does not depend on what else
the machine runs), and each API's ratio to chat.

    python -m bench apis [--streams 32] [--max-tokens 1000]
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from pathlib import Path

from tests.support.processes import free_port, spawn, start_gateway, wait_healthy

from .pool import Load, cpu_seconds, post_raw

PROMPT = "Tell me a story."
# Each API's final count of generated tokens, as it reports it.
_CHAT_TOKENS = re.compile(rb'"completion_tokens":(\d+)')
_ANTHROPIC_TOKENS = re.compile(rb'"output_tokens":(\d+)')


def _bodies(tokens: int, stream: bool) -> dict[str, tuple[str, dict, re.Pattern[bytes]]]:
    usage = {"stream_options": {"include_usage": True}} if stream else {}
    common = {"temperature": 0.0, "stream": stream}
    return {
        "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens, **common, **usage},
                 _CHAT_TOKENS),
        "messages": ("/v1/messages", {"model": "m", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens, **common},
                     _ANTHROPIC_TOKENS),
        "responses": ("/v1/responses", {"input": PROMPT, "max_output_tokens": tokens, "store": False, **common}, _ANTHROPIC_TOKENS),
        "completions": ("/v1/completions", {"prompt": PROMPT, "max_tokens": tokens, **common, **usage}, _CHAT_TOKENS),
    }


async def _one(host: str, port: int, path: str, body: dict, count: re.Pattern[bytes]) -> tuple[int, int, bool]:
    data = await post_raw(host, port, path, body)
    ok = data.startswith(b"HTTP/1.1 200")
    found = count.findall(data[-4096:])
    tokens = int(found[-1]) if ok and found else 0
    return tokens, data.count(b"data: "), ok and tokens > 0


async def _load(root: str, streams: int, path: str, body: dict, count: re.Pattern[bytes]) -> Load:
    host, port = root.removeprefix("http://").rsplit(":", 1)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(_one(host, int(port), path, body, count) for _ in range(streams)))
    return Load(sum(r[0] for r in results), sum(r[1] for r in results), time.perf_counter() - t0, sum(not r[2] for r in results))


def run(*, streams: int = 32, max_tokens: int = 1000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        port = free_port()
        fake = spawn("fake-worker", ["-m", "bench.fake_worker", "--bind", f"tcp://127.0.0.1:{port}", "--step-rate", "0"], logs)
        # At WARNING the gateway does not log the port it bound, so it gets one.
        gw, root = start_gateway([f"tcp://127.0.0.1:{port}"], logs, port=free_port(), args=["--log-level", "WARNING"])
        try:
            wait_healthy(root, [fake, gw])
            print(f"{streams} concurrent requests x {max_tokens} tokens per API, one gateway, a fake worker (no compute)")
            print(f"{'API':24}{'tok/s':>10}{'CPU ms/1k tok':>15}{'vs chat':>9}{'events':>9}{'errors':>8}")
            for stream in (True, False):
                base = None
                for name, (path, body, count) in _bodies(max_tokens, stream).items():
                    asyncio.run(_load(root, 4, path, {**body, "max_tokens": 16} if "max_tokens" in body else body, count))  # warm-up
                    before = cpu_seconds(gw.popen.pid)
                    r = asyncio.run(_load(root, streams, path, body, count))
                    after = cpu_seconds(gw.popen.pid)
                    ms = (after - before) * 1e6 / r.tokens if before is not None and after is not None and r.tokens else None
                    base = base or ms
                    ratio = f"{ms / base:8.2f}x" if ms and base else f"{'':9}"
                    cpu = f"{ms:15.1f}" if ms is not None else f"{'n/a':>15}"
                    label = f"{name} ({'stream' if stream else 'whole'})"
                    print(f"{label:24}{r.tps:10,.0f}{cpu}{ratio}{r.chunks if stream else '':>9}{r.errors:>8}")
        finally:
            gw.stop()
            fake.stop()
