"""`kmlx-worker --models-dir`: a folder of models, loaded on first use, end to
end with real worker and gateway processes (tiny models built offline: the
tiny llama twice, and small synthesized GGUFs whose first load converts them)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from tests.support.e2e import starts_processes
from tests.support.processes import Stack, start_gateway, start_worker, wait_healthy, wait_until

KEY = "test-key-1234"
AUTH = {"Authorization": f"Bearer {KEY}"}


def build_models_dir(folder: Path, tiny: Path, tokenizer_meta: dict, ggufs: tuple[str, ...] = ()) -> Path:
    """tiny-a, tiny-b (nested) and one small qwen2 GGUF per name in `ggufs`."""
    from tests.models.archs import write_model

    folder.mkdir(parents=True)
    (folder / "tiny-a").symlink_to(tiny)
    nested = folder / "someone" / "repo"
    nested.mkdir(parents=True)
    (nested / "tiny-b").symlink_to(tiny)  # nested as LM Studio keeps them
    for i, name in enumerate(ggufs):
        write_model(folder / f"{name}.gguf", "qwen2", tokenizer_meta, seed=i)
    (folder / "notes.txt").write_text("not a model")
    return folder


@pytest.fixture
@starts_processes
def models_stack(tmp_path: Path, log_dir: Path, tiny_model_path: Path, small_tokenizer_meta: dict,
                 tokenizer_meta: dict) -> Iterator[Callable[..., Stack]]:
    """Factory: gateway + workers, each worker given (models dir, extra args)."""
    stacks: list[Stack] = []

    def make(*workers: tuple[Path, list[str]], gateway_args: Sequence[str] = ()) -> Stack:
        procs, addresses = [], []
        for i, (folder, args) in enumerate(workers):
            proc, address = start_worker(None, log_dir, name=f"md-worker{i}",
                                         args=["--models-dir", str(folder), *args],)
            procs.append(proc)
            addresses.append(address)
        gateway, root = start_gateway(addresses, log_dir, args=list(gateway_args))
        stack = Stack(root, gateway, procs, addresses)
        stacks.append(stack)
        wait_healthy(root, [gateway, *procs])
        wait_until("every worker ready",
                   lambda: sum(w["ready"] for w in httpx.get(f"{root}/health").json()["workers"]) == len(procs), 120)
        return stack

    def folder(name: str, ggufs: tuple[str, ...] = (), *, big_vocabulary: bool = False) -> Path:
        """big_vocabulary: the GGUFs get the default model's 49k-token vocabulary
        (their first load takes seconds, not a fraction of one)."""
        meta = tokenizer_meta if big_vocabulary else small_tokenizer_meta
        return build_models_dir(tmp_path / name, tiny_model_path, meta, ggufs)

    make.folder = folder  # type: ignore[attr-defined]
    yield make
    for s in stacks:
        s.stop()


def models(stack: Stack, headers: dict | None = None) -> dict[str, bool]:
    data = httpx.get(f"{stack.base_url}/models", headers=headers, timeout=10).json()["data"]
    return {m["id"]: m["loaded"] for m in data}


def chat(stack: Stack, model: str, headers: dict | None = None, **body) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, **body}
    return httpx.post(f"{stack.base_url}/chat/completions", json=payload, headers=headers, timeout=300)


def test_first_request_loads_the_model_and_keep_alives_flow_while_it_loads(models_stack, tmp_path):
    folder = models_stack.folder("dir", ggufs=("qwen-a",), big_vocabulary=True)  # converts for seconds
    stack = models_stack((folder, ["--max-loaded-models", "3"]), gateway_args=["--keep-alive", "0.2"])
    assert models(stack) == {"qwen-a": False, "tiny-a": False, "tiny-b": False}  # the text file is no model

    r = chat(stack, "tiny-a")
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "tiny-a" and r.json()["choices"][0]["message"]["content"]
    assert models(stack) == {"qwen-a": False, "tiny-a": True, "tiny-b": False}

    # Streaming, its model converting and loading: SSE comments until the first token.
    lines = []
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", timeout=300, json={
        "model": "qwen-a", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "stream": True,
    }) as resp:
        assert resp.status_code == 200
        lines = [ln for ln in resp.iter_lines() if ln]
    first_data = next(i for i, ln in enumerate(lines) if ln.startswith("data:"))
    assert first_data > 0 and all(ln.startswith(":") for ln in lines[:first_data])
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[first_data][5:])["model"] == "qwen-a"
    assert models(stack)["qwen-a"] is True


def test_loaded_models_keep_serving_while_another_loads(models_stack):
    folder = models_stack.folder("dir", ggufs=("qwen-slow",), big_vocabulary=True)
    stack = models_stack((folder, ["--max-loaded-models", "3"]))
    assert chat(stack, "tiny-a").status_code == 200  # tiny-a in memory

    a_chunks: list[float] = []
    a_started, a_stop = threading.Event(), threading.Event()

    def stream_a() -> None:
        body = {"model": "tiny-a", "messages": [{"role": "user", "content": "Go on"}], "max_tokens": 3000,
                "stream": True, "temperature": 0}
        with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, timeout=600) as resp:
            for line in resp.iter_lines():
                if a_stop.is_set():
                    return  # leaving closes the stream: the gateway aborts it
                if line.startswith("data:") and '"content"' in line:
                    a_chunks.append(time.monotonic())
                    a_started.set()

    reader = threading.Thread(target=stream_a, daemon=True)
    reader.start()
    assert a_started.wait(120)
    sent = time.monotonic()
    first_b = None
    body = {"model": "qwen-slow", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stream": True}
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, timeout=600) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:") and '"content"' in line and first_b is None:
                first_b = time.monotonic()
    assert first_b is not None
    during_load = [t for t in a_chunks if sent < t < first_b]
    assert reader.is_alive(), "tiny-a's stream ended before qwen-slow loaded; make it longer"
    # tiny-a kept producing tokens while qwen-slow was read, converted and loaded.
    assert len(during_load) >= 5, (len(during_load), first_b - sent)
    a_stop.set()
    reader.join(60)


# The tiny model holds 0.012 GiB in memory (float32) and ~0.015 GiB on disk,
# the estimate before a load: 0.02 GiB leaves room for one.
@pytest.mark.parametrize("room", [["--max-loaded-models", "1"], ["--max-loaded-gb", "0.02"]], ids=["count", "gb"])
def test_least_recently_used_idle_model_makes_room_and_idle_models_unload(models_stack, room):
    folder = models_stack.folder("dir")
    stack = models_stack((folder, [*room, "--idle-unload-seconds", "3"]))
    assert chat(stack, "tiny-a").status_code == 200
    assert chat(stack, "tiny-b").status_code == 200
    assert models(stack) == {"tiny-a": False, "tiny-b": True}  # one at a time: tiny-a made room
    wait_until("tiny-b unloaded when idle", lambda: models(stack) == {"tiny-a": False, "tiny-b": False}, 60)
    assert chat(stack, "tiny-a").status_code == 200  # and loads again on demand


def test_load_and_unload_endpoints_need_the_api_key(models_stack):
    folder = models_stack.folder("dir")
    stack = models_stack((folder, []), gateway_args=["--api-key", KEY])
    url = stack.base_url
    assert httpx.post(f"{url}/models/tiny-a/load", timeout=30).status_code == 401
    r = httpx.post(f"{url}/models/tiny-a/load", headers=AUTH, timeout=300)
    assert r.status_code == 200 and r.json() == {"id": "tiny-a", "object": "model", "created": r.json()["created"],
                                                  "owned_by": "kmlx", "loaded": True}
    assert models(stack, AUTH)["tiny-a"] is True
    assert httpx.get(f"{url}/models/tiny-a", headers=AUTH, timeout=10).json()["loaded"] is True
    assert httpx.post(f"{url}/models/tiny-a/unload", timeout=30).status_code == 401
    r = httpx.post(f"{url}/models/tiny-a/unload", headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["loaded"] is False
    assert models(stack, AUTH)["tiny-a"] is False
    r = httpx.post(f"{url}/models/no-such-model/load", headers=AUTH, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    # Nothing loaded anywhere: an unknown name is a 404 naming what is served, not some model loaded at random.
    r = chat(stack, "gpt-4o", headers=AUTH)
    assert r.status_code == 404 and "tiny-a" in r.json()["error"]["message"]


def test_a_request_past_the_load_timeout_gets_503_and_retry_after(models_stack):
    folder = models_stack.folder("dir", ggufs=("qwen-late",), big_vocabulary=True)
    stack = models_stack((folder, ["--model-load-timeout", "0.5"]))
    r = chat(stack, "qwen-late")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "model_loading" and int(r.headers["Retry-After"]) > 0
    wait_until("the load went on and finished", lambda: models(stack)["qwen-late"], 300)
    assert chat(stack, "qwen-late").status_code == 200


def test_a_pool_routes_each_model_to_the_worker_that_has_it(models_stack, tmp_path):
    one = models_stack.folder("one")
    two = tmp_path / "two"
    two.mkdir()
    (two / "tiny-c").symlink_to(one / "tiny-a")
    stack = models_stack((one, []), (two, []))
    assert models(stack) == {"tiny-a": False, "tiny-b": False, "tiny-c": False}
    r = chat(stack, "tiny-c")
    assert r.status_code == 200 and r.headers["X-Worker-Id"] == "md-worker1"
    r = chat(stack, "tiny-a")
    assert r.status_code == 200 and r.headers["X-Worker-Id"] == "md-worker0"
    # The gateway learned of both loads from the workers' change messages.
    assert models(stack) == {"tiny-a": True, "tiny-b": False, "tiny-c": True}
    health = httpx.get(f"{stack.root_url}/health", timeout=10).json()
    assert {w["worker_id"]: w["models"] for w in health["workers"]} == {
        "md-worker0": {"tiny-a": "loaded", "tiny-b": "unloaded"}, "md-worker1": {"tiny-c": "loaded"},
    }
