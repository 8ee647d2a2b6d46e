"""Saving, loading and deleting conversation caches through /v1/conv_kv."""

from __future__ import annotations

import json
import signal
import uuid
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.test_prompt_cache import SYSTEM, answer, chat, kv, restart_worker, uncached


def post(stack, path: str, body) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/conv_kv/{path}", json=body, timeout=120)


def test_save_restart_load_hit(make_stack, tiny_model_path, log_dir):
    stack = make_stack(tiny_model_path)
    conv = f"saved-{uuid.uuid4().hex[:8]}"
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Remember this."}]
    r1 = chat(stack, conv, msgs)
    saved = post(stack, "save", {"conversation": conv, "title": "my chat"})
    assert saved.status_code == 200, saved.text
    body = saved.json()
    assert body["status"] == "saved" and body["id"] == conv and body["bytes"] > 0
    assert body["tokens"] == r1.json()["usage"]["total_tokens"]

    restart_worker(stack, tiny_model_path, log_dir, kill=signal.SIGKILL)  # no shutdown save: the explicit one counts
    loaded = post(stack, "load", {"conversation_id": conv})
    assert loaded.status_code == 200, loaded.text
    assert loaded.json() == {"status": "loaded", "id": conv, "tokens": body["tokens"]}
    follow = msgs + [{"role": "assistant", "content": answer(r1)}, {"role": "user", "content": "What was it?"}]
    r2 = chat(stack, conv, follow)
    assert kv(r2)[0] == "hit" and kv(r2)[1] >= r1.json()["usage"]["prompt_tokens"] - 1
    assert answer(r2) == uncached(stack, follow)

    stats = httpx.get(f"{stack.base_url}/conv_kv/stats").json()
    item = next(i for i in stats["items"] if i["id"] == conv)
    assert item["title"] == "my chat" and item["tokens"] == body["tokens"] and item["size_bytes"] > 0
    assert httpx.delete(f"{stack.base_url}/conv_kv/{conv}").json() == {"status": "deleted", "id": conv}
    assert httpx.delete(f"{stack.base_url}/conv_kv/{conv}").json() == {"status": "not_found", "id": conv}
    assert post(stack, "load", {"conversation": conv}).status_code == 404


def test_sigterm_persists_conversations_for_the_next_start(make_stack, tiny_model_path, log_dir):
    stack = make_stack(tiny_model_path)
    conv = f"kept-{uuid.uuid4().hex[:8]}"
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Long chat"}]
    r1 = chat(stack, conv, msgs)
    restart_worker(stack, tiny_model_path, log_dir, kill=signal.SIGTERM)
    follow = msgs + [{"role": "assistant", "content": answer(r1)}, {"role": "user", "content": "Go on"}]
    r2 = chat(stack, conv, follow)
    mode, cached, _ = kv(r2)
    assert mode == "hit" and cached >= r1.json()["usage"]["prompt_tokens"] - 1


def test_damaged_and_foreign_files_are_refused(make_stack, tiny_model_path, log_dir):
    disk = log_dir / f"conversations-{uuid.uuid4().hex}"
    stack = make_stack(tiny_model_path, worker_args=["--conversation-disk-dir", str(disk)])
    for conv in ("damaged", "foreign"):
        chat(stack, conv, [{"role": "user", "content": "Hello"}])
        assert post(stack, "save", {"conversation": conv}).status_code == 200
    damaged = next(disk.glob("damaged-*.safetensors"))
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    meta_path = next(disk.glob("foreign-*.json"))
    meta = json.loads(meta_path.read_text())
    meta["model"] = "some-other-model"
    meta_path.write_text(json.dumps(meta))

    r = post(stack, "load", {"conversation": "damaged"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "cache_file_corrupt"
    r = post(stack, "load", {"conversation": "foreign"})
    assert r.status_code == 409 and "some-other-model" in r.json()["error"]["message"]
    # and the worker keeps serving
    assert kv(chat(stack, "damaged-2", [{"role": "user", "content": "Hi"}]))[0] == "fresh"


@pytest.mark.parametrize("bad", ["../../etc/passwd", "%2e%2e", "a\u0000b", "x" * 10_000, "", "..", "a/b"])
def test_hostile_ids_fail_cleanly(tiny_stack, bad):
    for path in ("save", "load"):
        r = post(tiny_stack, path, {"conversation": bad})
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["param"] == "conversation"
    if bad:
        r = httpx.delete(f"{tiny_stack.base_url}/conv_kv/{quote(bad, safe='')}")
        assert r.status_code in (400, 404) and "error" in r.json()


def test_save_errors(tiny_stack):
    assert post(tiny_stack, "save", {}).status_code == 400
    r = post(tiny_stack, "save", {"conversation": f"never-{uuid.uuid4().hex}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "conversation_not_found"
    r = httpx.post(f"{tiny_stack.base_url}/conv_kv/save", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_disk_budget_gives_413_and_keeps_existing_files(make_stack, tiny_model_path):
    stack = make_stack(tiny_model_path, worker_args=["--conversation-disk-max-gb", "0.0000001"])
    chat(stack, "big", [{"role": "user", "content": "Hello"}])
    r = post(stack, "save", {"conversation": "big"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "disk_budget_exceeded"
