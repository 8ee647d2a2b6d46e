"""`kmlx` commands as scripts see them: stdout, stderr, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from client.cli import app
from tests.client.client_fake_gateway import FakeGateway

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
runner = CliRunner()


def kmlx(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_prompt_prints_only_the_answer(fake_gateway: FakeGateway, client_env: dict[str, str]) -> None:
    r = kmlx(client_env, "chat", "-p", "Say hello", "--base-url", fake_gateway.base_url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Hello from fake. You said: Say hello\n"
    assert r.stderr == ""


def test_verbose_stats_go_to_stderr(fake_gateway: FakeGateway, client_env: dict[str, str]) -> None:
    r = kmlx(client_env, "chat", "-p", "THINK", "-v", "--base-url", fake_gateway.base_url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "The answer is 42.\n"
    assert "Let me think about it." in r.stderr  # thinking: stderr, never stdout
    assert "kv fresh" in r.stderr and "decode 42.5 tok/s" in r.stderr and "ttft" in r.stderr


def test_stdin_is_the_prompt(fake_gateway: FakeGateway, client_env: dict[str, str]) -> None:
    env = {**client_env, "KMLX_BASE_URL": fake_gateway.base_url}
    r = kmlx(env, "chat", "--system", "terse", "--max-tokens", "5", stdin="from a pipe image:x.png\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Hello from fake. You said: from a pipe image:x.png\n"
    body = fake_gateway.chat_requests[-1]
    # stdin documents are not scanned for image: tokens
    assert body["messages"][-1] == {"role": "user", "content": "from a pipe image:x.png"}
    assert body["messages"][0] == {"role": "system", "content": "terse"}
    assert body["max_tokens"] == 5 and body["model"] == "fake-model"


def test_error_exit_code_and_message(fake_gateway: FakeGateway, client_env: dict[str, str]) -> None:
    r = kmlx(client_env, "chat", "-p", "ERROR", "--base-url", fake_gateway.base_url)
    assert r.returncode == 1
    assert r.stdout == ""
    assert "max_tokens must be positive" in r.stderr and "Traceback" not in r.stderr


def test_unreachable_gateway(client_env: dict[str, str]) -> None:
    r = kmlx(client_env, "chat", "-p", "hi", "--base-url", "http://127.0.0.1:9/v1")
    assert r.returncode == 1 and r.stdout == ""
    assert "Cannot reach the kmlx gateway at http://127.0.0.1:9/v1" in r.stderr
    assert "kmlx-gateway" in r.stderr and "Traceback" not in r.stderr


def test_images_in_one_shot(fake_gateway: FakeGateway, tmp_path: Path) -> None:
    (tmp_path / "a b.png").write_bytes(PNG)
    (tmp_path / "c.png").write_bytes(PNG)
    r = runner.invoke(
        app,
        ["chat", "-u", fake_gateway.base_url, "-i", str(tmp_path / "c.png"), "-p", f'image:"{tmp_path}/a b.png" what?'],
    )
    assert r.exit_code == 0, r.output
    content = fake_gateway.chat_requests[-1]["messages"][-1]["content"]
    assert [p["type"] for p in content] == ["image_url", "image_url", "text"]
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in content[:2])
    assert content[2]["text"] == "what?"


def test_missing_image_is_friendly(fake_gateway: FakeGateway) -> None:
    r = runner.invoke(app, ["chat", "-u", fake_gateway.base_url, "-p", "image:/no/such.png hi"])
    assert r.exit_code == 1
    assert "image not found: /no/such.png" in r.stderr
    assert fake_gateway.chat_requests == []


def test_no_stream_one_request(fake_gateway: FakeGateway) -> None:
    r = runner.invoke(app, ["chat", "-u", fake_gateway.base_url, "--no-stream", "-p", "x"])
    assert r.exit_code == 0 and r.stdout == "Hello from fake. You said: x\n"
    assert len(fake_gateway.chat_requests) == 1 and fake_gateway.chat_requests[0]["stream"] is False


def test_conversation_id_and_api_key_env(fake_gateway: FakeGateway) -> None:
    r = runner.invoke(
        app, ["chat", "-u", fake_gateway.base_url, "-c", "my-conv", "-p", "x"], env={"OPENAI_API_KEY": "sk-env"}
    )
    assert r.exit_code == 0, r.output
    assert fake_gateway.chat_requests[-1]["conversation"] == "my-conv"
    assert fake_gateway.requests[-1]["headers"]["Authorization"] == "Bearer sk-env"


def test_models(fake_gateway: FakeGateway) -> None:
    r = runner.invoke(app, ["models", "-u", fake_gateway.base_url])
    assert r.exit_code == 0 and r.stdout == "fake-model\n"
    r = runner.invoke(app, ["models", "-u", fake_gateway.base_url, "--json"])
    assert json.loads(r.stdout)[0]["id"] == "fake-model"


def test_health(fake_gateway: FakeGateway) -> None:
    r = runner.invoke(app, ["health", "-u", fake_gateway.base_url])
    assert r.exit_code == 0 and r.stdout.startswith("ready")
    fake_gateway.ready = False
    r = runner.invoke(app, ["health", "-u", fake_gateway.base_url])
    assert r.exit_code == 1 and "not ready (HTTP 503)" in r.stderr
    r = runner.invoke(app, ["health", "-q", "-u", fake_gateway.base_url])
    assert r.exit_code == 1 and r.stdout == r.stderr == ""
    r = runner.invoke(app, ["health", "-u", "http://127.0.0.1:9/v1"])
    assert r.exit_code == 1 and "Cannot reach" in r.stderr


def test_health_wait(fake_gateway: FakeGateway) -> None:
    import threading

    fake_gateway.ready = False
    threading.Timer(0.5, lambda: setattr(fake_gateway, "ready", True)).start()
    r = runner.invoke(app, ["health", "--wait", "20", "-u", fake_gateway.base_url])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args", [[], ["--help"], ["chat", "--help"], ["models", "-h"], ["health", "--help"]])
def test_help_reads_well(args: list[str]) -> None:
    r = runner.invoke(app, args, env={"COLUMNS": "100"})
    assert r.exit_code in (0, 2)  # no args shows help (click uses 2)
    assert "Usage" in r.output
    if args[:1] == ["chat"]:
        for flag in ("--base-url", "--model", "--max-tokens", "--temperature", "--system", "--no-stream",
                     "--verbose", "--conversation-id", "--api-key", "KMLX_BASE_URL", "OPENAI_API_KEY"):
            assert flag in r.output, flag


def test_extra_request_fields(fake_gateway: FakeGateway) -> None:
    r = runner.invoke(
        app,
        ["chat", "-u", fake_gateway.base_url, "-o", "top_k=20", "-o", "ignore_eos=true", "-o", "stop=[\"x\"]",
         "-o", "note=plain words", "-o", "stream=false", "-p", "x"],
    )
    assert r.exit_code == 0, r.output
    body = fake_gateway.chat_requests[-1]
    assert body["top_k"] == 20 and body["ignore_eos"] is True and body["stop"] == ["x"]
    assert body["note"] == "plain words" and body["stream"] is True  # the client owns `stream`
    r = runner.invoke(app, ["chat", "-u", fake_gateway.base_url, "-o", "novalue", "-p", "x"])
    assert r.exit_code == 2 and "KEY=VALUE" in r.output
