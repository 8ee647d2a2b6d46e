"""Images and video end to end: real gateway + worker on the tiny Qwen2-VL,
real HTTP (the OpenAI SDK where it speaks the shape), real generation."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import openai
import pytest
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion

from tests.vision.samples import data_url, image_bytes, video_bytes

GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def client(vision_stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=vision_stack.base_url, api_key="unused", max_retries=0, timeout=120)


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def ask_about(*parts: dict, text: str = "Describe this.") -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def answer(client: openai.OpenAI, messages: list[Any], max_tokens: int = 8) -> tuple[str, ChatCompletion]:
    r = client.chat.completions.create(model="tiny-vlm", messages=messages, max_tokens=max_tokens, temperature=0.0)
    return r.choices[0].message.content or "", r


def usage(r: ChatCompletion) -> CompletionUsage:
    assert r.usage is not None, "no usage in the response"
    return r.usage


def post(stack, body: dict) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=120)


@pytest.mark.parametrize("fmt,mime", [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_data_url_image(client, fmt, mime):
    text, r = answer(client, ask_about(image_part(data_url(image_bytes("noise", fmt=fmt), mime))))
    assert r.choices[0].finish_reason == "length"
    assert usage(r).completion_tokens == 8 and text


def test_the_image_reaches_the_model(client):
    """Same prompt, greedy: two different images give different answers;
    the same image twice gives the same answer."""
    red = data_url(image_bytes("red"))
    blue = data_url(image_bytes("blue"))
    a, _ = answer(client, ask_about(image_part(red)), max_tokens=12)
    b, _ = answer(client, ask_about(image_part(blue)), max_tokens=12)
    again, _ = answer(client, ask_about(image_part(red)), max_tokens=12)
    assert a != b
    assert a == again


def test_usage_counts_tokens_not_characters(client):
    """A 64x64 image is 4 merged patches (+2 markers) for Qwen2-VL; its data
    URL is thousands of characters. kamiwaza-mlx billed the characters."""
    url = data_url(image_bytes("noise", size=(64, 64)))
    assert len(url) > 5000
    _, with_image = answer(client, ask_about(image_part(url)), max_tokens=2)
    _, text_only = answer(client, [{"role": "user", "content": "Describe this."}], max_tokens=2)
    assert usage(with_image).prompt_tokens - usage(text_only).prompt_tokens == 6
    _, bigger = answer(client, ask_about(image_part(data_url(image_bytes("noise", size=(128, 128))))), max_tokens=2)
    assert usage(bigger).prompt_tokens - usage(text_only).prompt_tokens == 25 + 2  # 140x140 -> 10x10 patches -> 25


def test_stream_matches_non_stream(client):
    messages = ask_about(image_part(data_url(image_bytes("noise", seed=7))))
    full, _ = answer(client, messages, max_tokens=10)
    chunks = list(client.chat.completions.create(
        model="tiny-vlm", messages=messages, max_tokens=10, stream=True, stream_options={"include_usage": True}, **GREEDY))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full
    assert chunks[-1].usage.completion_tokens == 10


def test_top_level_images(vision_stack, client):
    """Top-level ``images: [...]`` (kamiwaza-mlx compatibility) are attached after the last user message's text."""
    url = data_url(image_bytes("noise", seed=11))
    r = post(vision_stack, {"messages": [{"role": "user", "content": "Describe this."}], "images": [url],
                            "max_tokens": 8, **GREEDY})
    assert r.status_code == 200, r.text
    as_part, _ = answer(client, [{"role": "user", "content": [{"type": "text", "text": "Describe this."}, image_part(url)]}])
    assert r.json()["choices"][0]["message"]["content"] == as_part


def test_two_images_in_one_message(client):
    red, blue = data_url(image_bytes("red")), data_url(image_bytes("blue"))
    rb, r = answer(client, ask_about(image_part(red), image_part(blue)), max_tokens=12)
    br, _ = answer(client, ask_about(image_part(blue), image_part(red)), max_tokens=12)
    _, one = answer(client, ask_about(image_part(red)), max_tokens=12)
    assert usage(r).prompt_tokens == usage(one).prompt_tokens + 6  # both images are in the prompt
    assert rb != br  # ... in order


def test_image_in_an_earlier_turn(vision_stack, client):
    red = data_url(image_bytes("red"))
    blue = data_url(image_bytes("blue"))

    def turns(url: str) -> list[dict]:
        return [
            *ask_about(image_part(url), text="Remember this picture."),
            {"role": "assistant", "content": "I will."},
            {"role": "user", "content": "What did it show?"},
        ]

    r = client.chat.completions.with_raw_response.create(
        model="tiny-vlm", messages=turns(red), max_tokens=12, extra_body={"conversation_id": "vision-turns"}, **GREEDY)
    first = r.parse().choices[0].message.content
    # The worker does not reuse a vision prompt's KV across turns, and says so.
    assert r.headers["x-conv-kv"] == "disabled"
    second, _ = answer(client, turns(blue), max_tokens=12)
    assert first != second  # the earlier turn's image still shapes the answer


def test_http_url_served_on_loopback(client, media_server):
    text, r = answer(client, ask_about(image_part(f"{media_server.url}/noise.png")))
    local, _ = answer(client, ask_about(image_part(data_url(image_bytes("noise", seed=3)))))
    assert text == local  # the same bytes, fetched by the gateway


def test_local_path_in_the_allowed_directory(client, media_dir):
    path = media_dir / "allowed" / "green.png"
    by_path, _ = answer(client, ask_about(image_part(str(path))))
    by_url, _ = answer(client, ask_about(image_part(path.as_uri())))
    inline, _ = answer(client, ask_about(image_part(data_url(image_bytes("green")))))
    assert by_path == by_url == inline


@pytest.mark.parametrize("stream", [False, True])
def test_video_clip_becomes_frames(vision_stack, stream):
    clip = data_url(video_bytes(), "video/mp4")
    body = {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": clip}},
                                                      {"type": "text", "text": "What moves?"}]}],
            "max_tokens": 8, "stream": stream, "stream_options": {"include_usage": True}, **GREEDY}
    r = post(vision_stack, body)
    assert r.status_code == 200, r.text
    if stream:
        assert r.text.rstrip().endswith("data: [DONE]")
        assert '"finish_reason":"length"' in r.text.replace(" ", "")
    else:
        usage = r.json()["usage"]
        # 8 frames, each its own image: far more prompt than one small image.
        assert usage["prompt_tokens"] > 8 * 6 and usage["completion_tokens"] == 8


def test_video_over_http(vision_stack, media_server):
    body = {"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": f"{media_server.url}/clip.mp4"}}, {"type": "text", "text": "Go"}]}],
        "max_tokens": 4, **GREEDY}
    r = post(vision_stack, body)
    assert r.status_code == 200, r.text


def test_text_request_to_a_vision_model(client):
    text, r = answer(client, [{"role": "user", "content": "Just text."}])
    assert text and usage(r).completion_tokens == 8


def form_schema(fields: int) -> dict:
    props = {f"field_{i}": {"type": "string", "enum": ["yes", "no"]} for i in range(fields)}
    return {"type": "object", "properties": props, "required": list(props)}


def test_an_output_schema_holds_with_an_image(vision_stack):
    """The grammar of a media request is compiled on the media thread (a
    400-field schema takes a while to compile: not on the compute loop)."""
    body = {"messages": ask_about(image_part(data_url(image_bytes("green")))), "max_tokens": 8, **GREEDY,
            "response_format": {"type": "json_schema", "json_schema": {"name": "form", "schema": form_schema(400)}}}
    r = post(vision_stack, body)
    assert r.status_code == 200, r.text[:500]
    assert r.json()["choices"][0]["message"]["content"].startswith('{"field'), r.json()  # the grammar's only start


def test_an_output_schema_that_cannot_be_enforced_is_a_400_with_an_image(vision_stack):
    schema = {"type": "not-a-type", "description": "x" * 10_000}
    body = {"messages": ask_about(image_part(data_url(image_bytes("green")))), "max_tokens": 8,
            "response_format": {"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}}}
    r = post(vision_stack, body)
    assert r.status_code == 400, r.text[:500]
    err = r.json()["error"]
    assert err["code"] == "unsupported_schema" and err["param"] == "response_format", err


def test_image_and_text_requests_run_together(vision_stack, client):
    """A text stream and several image requests at once all finish."""
    results: dict[str, object] = {}

    def text_stream() -> None:
        chunks = list(client.chat.completions.create(
            model="tiny-vlm", messages=[{"role": "user", "content": "Tell a long story."}], max_tokens=60, stream=True,
            stream_options={"include_usage": True}, **GREEDY))
        results["text"] = chunks[-1].usage.completion_tokens

    def image(i: int) -> None:
        _, r = answer(client, ask_about(image_part(data_url(image_bytes("noise", size=(200, 150), seed=i)))))
        results[f"image{i}"] = usage(r).completion_tokens

    threads = [threading.Thread(target=text_stream)] + [threading.Thread(target=image, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {"text": 60, "image0": 8, "image1": 8, "image2": 8}


def test_text_turns_on_a_vision_model_reuse_the_conversation_cache(vision_stack):
    """Only vision requests opt out of KV reuse; text turns on the same model
    get conversation caching like on a text model, with the same answers."""
    conv = "vision-model-text-turns"
    msgs = [{"role": "user", "content": "Hello there, how are you today?"}]
    r1 = post(vision_stack, {"messages": msgs, "conversation": conv, "max_tokens": 6, **GREEDY})
    msgs += [{"role": "assistant", "content": r1.json()["choices"][0]["message"]["content"]},
             {"role": "user", "content": "And then?"}]
    r2 = post(vision_stack, {"messages": msgs, "conversation": conv, "max_tokens": 6, **GREEDY})
    assert r2.headers["x-conv-kv"] == "hit", r2.headers
    assert int(r2.headers["x-conv-cached-tokens"]) > 0
    fresh = post(vision_stack, {"messages": msgs, "reset_conversation": True, "max_tokens": 6, **GREEDY})
    assert r2.json()["choices"][0]["message"]["content"] == fresh.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("where", ["media-thread", "compute-loop"])
def test_every_vision_tower_placement_gives_the_same_answers(client, make_stack, tiny_vlm_path, where):
    """The default (the tower sliced between batch steps) and the other
    placements (--vision-encode-on) serve the same tokens."""
    messages = ask_about(image_part(data_url(image_bytes("noise", size=(120, 90), seed=21))),
                         image_part(data_url(image_bytes("blue"))))
    expected, _ = answer(client, messages, max_tokens=10)
    stack = make_stack(tiny_vlm_path, worker_args=["--vision-encode-on", where])
    other = openai.OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=120)
    got, _ = answer(other, messages, max_tokens=10)
    assert got == expected
