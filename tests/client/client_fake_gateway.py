"""A small fake of the kmlx gateway's HTTP surface, for client-only tests.

It speaks just enough OpenAI (models, health, chat stream and JSON, errors)
and records every request, so tests can assert on what the client sent.
What it answers depends on magic words in the last user message:

  SLOW      stream a long answer slowly (for Ctrl-C); a client hang-up is
            counted in `aborted`
  ERROR     400 with an OpenAI-shaped error body
  MIDERROR  a few tokens, then an error event in the stream
  THINK     reasoning_content first, then the answer
  MARKDOWN  an answer with Markdown in it
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeGateway:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.aborted = 0
        self.ready = True
        self.models = [{"id": "fake-model", "object": "model", "created": 1700000000, "owned_by": "kmlx"}]
        self._convs: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> FakeGateway:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["path"].endswith("/chat/completions")]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.02)
        return False

    # -- behaviour ------------------------------------------------------------ #

    def kv_state(self, body: dict[str, Any]) -> tuple[str, str]:
        conv = str(body.get("conversation") or body.get("conversation_id") or "_default")
        with self._lock:
            kv = "hit" if conv in self._convs else "fresh"
            self._convs.add(conv)
        return conv, kv


def _last_user_text(body: dict[str, Any]) -> str:
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def _make_handler(fake: FakeGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _record(self, body: Any) -> None:
            fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})

        def do_GET(self) -> None:
            self._record(None)
            if self.path == "/v1/models":
                self._json(200, {"object": "list", "data": fake.models})
            elif self.path == "/health":
                if fake.ready:
                    self._json(200, {"status": "ok", "workers": 1})
                else:
                    self._json(503, {"status": "starting", "workers": 0})
            else:
                self._json(404, {"error": {"message": "no such path", "type": "not_found", "param": None, "code": None}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                self._json(400, {"error": {"message": "bad json", "type": "invalid_request_error"}})
                return
            self._record(body)
            if self.path != "/v1/chat/completions":
                self._json(404, {"error": {"message": "no such path", "type": "not_found"}})
                return
            text = _last_user_text(body)
            if "ERROR" in text and "MIDERROR" not in text:
                self._json(
                    400,
                    {"error": {"message": "max_tokens must be positive", "type": "invalid_request_error",
                               "param": "max_tokens", "code": None}},
                )
                return
            conv, kv = fake.kv_state(body)
            n_prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
            cached = 0 if kv == "fresh" else max(0, n_prompt - len(text.split()))
            headers = {
                "X-Conv-Id": conv,
                "X-Conv-KV": kv,
                "X-Conv-Cached-Tokens": str(cached),
                "X-Conv-Processing-Tokens": str(n_prompt - cached),
                "X-Request-Id": f"req-{len(fake.requests)}",
            }
            reasoning, answer = _answer_for(text)
            usage = {
                "prompt_tokens": n_prompt,
                "completion_tokens": len(answer),
                "total_tokens": n_prompt + len(answer),
                "tokens_per_second": 42.5,
                "prompt_tokens_details": {"cached_tokens": cached},
            }
            if not body.get("stream"):
                message: dict[str, Any] = {"role": "assistant", "content": "".join(answer)}
                if reasoning:
                    message["reasoning_content"] = "".join(reasoning)
                self._json(
                    200,
                    {"id": "chatcmpl-fake", "object": "chat.completion", "model": "fake-model",
                     "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                     "usage": usage, "metadata": {"conversation_id": conv}},
                    headers,
                )
                return
            self._stream(body, text, reasoning, answer, usage, headers)

        def _stream(self, body: dict[str, Any], text: str, reasoning: list[str], answer: list[str],
                    usage: dict[str, Any], headers: dict[str, str]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()

            def chunk(delta: dict[str, Any], finish: str | None = None) -> None:
                obj = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake-model",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                self.wfile.flush()

            delay = 0.05 if "SLOW" in text else 0.0
            try:
                self.wfile.write(b": keep-alive\n\n")
                chunk({"role": "assistant", "content": ""})
                for piece in reasoning:
                    chunk({"reasoning_content": piece})
                for i, piece in enumerate(answer):
                    if "MIDERROR" in text and i == 3:
                        err = {"error": {"message": "worker crashed", "type": "server_error", "code": "worker_lost"}}
                        self.wfile.write(f"data: {json.dumps(err)}\n\n".encode())
                        self.wfile.flush()
                        return
                    chunk({"content": piece})
                    if delay:
                        time.sleep(delay)
                chunk({}, "stop")
                if (body.get("stream_options") or {}).get("include_usage"):
                    obj = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [], "usage": usage}
                    self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                with fake._lock:
                    fake.aborted += 1

    return Handler


def _answer_for(text: str) -> tuple[list[str], list[str]]:
    """(reasoning pieces, answer pieces) for a prompt."""
    if "SLOW" in text:
        return [], [f"word{i} " for i in range(2000)]
    if "THINK" in text:
        return ["Let me ", "think ", "about it."], ["The ", "answer ", "is ", "42."]
    if "MARKDOWN" in text:
        return [], ["# Title\n\n", "Some **bold** ", "text and `code`.\n\n", "- one\n", "- two\n"]
    words = f"Hello from fake. You said: {text}".split(" ")
    return [], [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
