"""The real REPL in a pseudo-terminal, against the fake gateway."""

from __future__ import annotations

import sys
from pathlib import Path

import pexpect

from tests.client.client_fake_gateway import FakeGateway
from tests.client.client_pty import PROMPT, finish, matched, say, spawn_chat

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def test_turns_cache_report_and_ctrl_n(fake_gateway: FakeGateway, client_env: dict[str, str]) -> None:
    child = spawn_chat(client_env, fake_gateway.base_url, "-v")
    say(child, "hello there")
    child.expect_exact("Hello from fake. You said: hello there")
    child.expect_exact("kv fresh")
    child.expect_exact(PROMPT)
    say(child, "second turn")
    child.expect_exact("You said: second turn")
    child.expect_exact("kv hit")
    child.expect_exact(PROMPT)
    first_id = fake_gateway.chat_requests[0]["conversation"]
    assert fake_gateway.chat_requests[1]["conversation"] == first_id
    assert [m["role"] for m in fake_gateway.chat_requests[1]["messages"]] == ["user", "assistant", "user"]

    child.sendcontrol("n")
    child.expect("new conversation (kmlx-[0-9a-f]+)")
    new_id = matched(child, 1)
    child.expect_exact(PROMPT)
    say(child, "after reset")
    child.expect_exact("You said: after reset")
    child.expect_exact("kv fresh")
    child.expect_exact(PROMPT)
    last = fake_gateway.chat_requests[-1]
    assert last["conversation"] == new_id != first_id
    assert last["messages"] == [{"role": "user", "content": "after reset"}]

    child.sendcontrol("d")
    assert finish(child) == 0


def test_ctrl_c_stops_the_answer_then_quits(fake_gateway: FakeGateway, client_env: dict[str, str]) -> None:
    child = spawn_chat(client_env, fake_gateway.base_url)
    say(child, "SLOW please")
    child.expect_exact("word3 ")
    child.sendcontrol("c")
    child.expect_exact("stopped")
    child.expect_exact(PROMPT)
    assert fake_gateway.wait_for(lambda: fake_gateway.aborted == 1), "the server never saw the hang-up"
    n_words = (child.before or "").count("word")
    assert n_words < 1000  # it really stopped
    # the interrupted turn is not kept: the next request has only the new question
    say(child, "next")
    child.expect_exact("You said: next")
    child.expect_exact(PROMPT)
    assert fake_gateway.chat_requests[-1]["messages"] == [{"role": "user", "content": "next"}]
    # Ctrl-C at an empty prompt warns once, the second one quits
    child.sendcontrol("c")
    child.expect_exact("Ctrl-C again")
    child.sendcontrol("c")
    code = finish(child)
    assert code == 0, f"exit {code}; last output: {child.before!r}"


def test_ctrl_c_clears_a_typed_line(fake_gateway: FakeGateway, client_env: dict[str, str]) -> None:
    child = spawn_chat(client_env, fake_gateway.base_url)
    child.send("never sent")
    child.sendcontrol("c")
    say(child, "sent")
    child.expect_exact("You said: sent")
    child.expect_exact(PROMPT)
    assert [r["messages"][-1]["content"] for r in fake_gateway.chat_requests] == ["sent"]
    child.sendcontrol("d")
    assert finish(child) == 0


def test_images_and_friendly_errors(fake_gateway: FakeGateway, client_env: dict[str, str], tmp_path: Path) -> None:
    pics = tmp_path / "My Pictures"
    pics.mkdir()
    (pics / "red dot.png").write_bytes(PNG)
    env = {**client_env, "HOME": str(tmp_path)}
    child = spawn_chat(env, fake_gateway.base_url)
    say(child, "image:~/nope.png what")
    child.expect_exact("image not found: ~/nope.png")
    child.expect_exact(PROMPT)
    say(child, 'image:"~/My Pictures/red dot.png" Describe this')
    child.expect_exact("attached 1 image")
    child.expect_exact("You said: Describe this")
    child.expect_exact(PROMPT)
    content = fake_gateway.chat_requests[-1]["messages"][-1]["content"]
    assert content[0]["type"] == "image_url"
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert content[1] == {"type": "text", "text": "Describe this"}
    say(child, "ERROR now")
    child.expect_exact("max_tokens must be positive")
    child.expect_exact(PROMPT)
    say(child, "/nope")
    child.expect_exact("unknown command /nope")
    child.expect_exact(PROMPT)
    say(child, "/quit")
    assert finish(child) == 0


def test_multiline_input(fake_gateway: FakeGateway, client_env: dict[str, str]) -> None:
    child = spawn_chat(client_env, fake_gateway.base_url)
    child.send("line one\x1b\r")  # Alt-Enter (Esc, Enter) adds a line
    say(child, "line two")
    child.expect_exact("You said: line one")
    child.expect_exact(PROMPT)
    child.send('"""\r')  # an open triple quote: Enter adds lines until it closes
    child.send("alpha\r")
    say(child, 'beta"""')
    child.expect_exact("You said: alpha")
    child.expect_exact(PROMPT)
    sent = [r["messages"][-1]["content"] for r in fake_gateway.chat_requests]
    assert sent == ["line one\nline two", "alpha\nbeta"]
    child.sendcontrol("d")
    assert finish(child) == 0


def test_history_persists_across_sessions(fake_gateway: FakeGateway, client_env: dict[str, str]) -> None:
    child = spawn_chat(client_env, fake_gateway.base_url)
    say(child, "remember me")
    child.expect_exact("You said: remember me")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    assert finish(child) == 0
    hist = Path(client_env["XDG_STATE_HOME"]) / "kmlx" / "chat_history"
    assert "remember me" in hist.read_text()
    assert hist.stat().st_mode & 0o077 == 0  # private

    child = spawn_chat(client_env, fake_gateway.base_url)
    child.send("\x1b[A")  # Up arrow
    child.send("\r")
    child.expect_exact("You said: remember me")
    child.expect_exact(PROMPT)
    assert fake_gateway.chat_requests[-1]["messages"][-1]["content"] == "remember me"
    say(child, "other words")
    child.expect_exact("You said: other words")
    child.expect_exact(PROMPT)
    child.sendcontrol("r")  # reverse search: Enter takes the match, Enter sends it
    child.expect_exact("I-search")
    child.send("remem")
    child.expect_exact("ber me")
    child.send("\r")
    child.send("\r")
    child.expect_exact("You said: remember me")
    child.expect_exact(PROMPT)
    assert fake_gateway.chat_requests[-1]["messages"][-1]["content"] == "remember me"
    child.sendcontrol("d")
    assert finish(child) == 0


def test_thinking_and_markdown(fake_gateway: FakeGateway, client_env: dict[str, str]) -> None:
    child = spawn_chat(client_env, fake_gateway.base_url)
    say(child, "THINK")
    child.expect_exact("about it.")  # dimmed, chunk by chunk
    child.expect_exact("The answer is 42.")
    child.expect_exact(PROMPT)
    say(child, "MARKDOWN")
    child.expect_exact("Some **bold** text")  # raw while streaming
    child.expect_exact("\x1b[J")  # then erased and redrawn
    child.expect_exact("Title")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    assert finish(child) == 0
    # history holds the answer, never the thinking
    assert fake_gateway.chat_requests[-1]["messages"][1] == {"role": "assistant", "content": "The answer is 42."}


def test_unreachable_gateway_in_a_terminal(client_env: dict[str, str]) -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "client", "chat", "--base-url", "http://127.0.0.1:9/v1"],
        env=client_env,
        encoding="utf-8",
        timeout=30,
    )
    child.expect_exact("Cannot reach the kmlx gateway at http://127.0.0.1:9/v1")
    assert finish(child) == 1
