"""Bad media: every case is a clear OpenAI-shaped 4xx, and the worker keeps
serving afterwards. Real processes, real HTTP."""

from __future__ import annotations

import httpx
import pytest

from tests.vision.conftest import FETCH_TIMEOUT, MAX_IMAGE_MB
from tests.vision.samples import data_url, huge_pixel_png, image_bytes, video_bytes


def post(stack, body: dict) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=120)


def with_image(url: str, kind: str = "image_url") -> dict:
    part = {"type": kind, kind: {"url": url}}
    return {"messages": [{"role": "user", "content": [part, {"type": "text", "text": "Describe."}]}], "max_tokens": 4}


def assert_error(r: httpx.Response, status: int, code: str, param: str | None = "messages[0].content[0]") -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code and err["type"] and err["message"]
    if param is not None:
        assert err["param"] == param
    return err["message"]


def truncated_jpeg() -> bytes:
    """A JPEG whose header is intact but whose body stops half-way: only a
    full decode (in the worker) notices."""
    data = image_bytes("noise", size=(256, 256), fmt="JPEG")
    return data[: len(data) // 2]


CASES = {
    "corrupt base64": (lambda s: with_image("data:image/png;base64,iVBORw0KGgo!!!not-base64"), 400, "invalid_image_url"),
    "not an image": (lambda s: with_image(data_url(b"%PDF-1.4 definitely not a picture", "image/png")), 400, "invalid_image"),
    "truncated image": (lambda s: with_image(data_url(truncated_jpeg(), "image/jpeg")), 400, "invalid_image"),
    "too many bytes": (lambda s: with_image(data_url(image_bytes("noise", size=(400, 400)))), 413, "image_too_large"),
    "too many pixels": (lambda s: with_image(data_url(huge_pixel_png())), 400, "image_too_large"),
    "url times out": (lambda s: with_image(f"{s['server'].url}/slow"), 400, "media_fetch_timeout"),
    "url not found": (lambda s: with_image(f"{s['server'].url}/missing.png"), 400, "media_fetch_failed"),
    "path outside allowed dir": (lambda s: with_image(str(s["dir"] / "outside.png")), 400, "local_media_forbidden"),
    "symlink out of allowed dir": (lambda s: with_image(str(s["dir"] / "allowed" / "escape.png")), 400, "local_media_forbidden"),
    "dot-dot out of allowed dir": (lambda s: with_image(f"{s['dir']}/allowed/../outside.png"), 400, "local_media_forbidden"),
    "relative path": (lambda s: with_image("green.png"), 400, "invalid_image_url"),
    "not a video": (lambda s: with_image(data_url(b"just some text, no container", "video/mp4"), "video_url"), 400, "invalid_video"),
    "video as image": (lambda s: with_image(data_url(video_bytes(), "video/mp4")), 400, "invalid_image"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_media_is_a_clear_4xx(vision_stack, media_server, media_dir, case):
    make, status, code = CASES[case]
    message = assert_error(post(vision_stack, make({"server": media_server, "dir": media_dir})), status, code)
    assert "Traceback" not in message


def test_the_cases_cover_the_limits():
    assert len(image_bytes("noise", size=(400, 400))) > MAX_IMAGE_MB * 1024 * 1024
    assert FETCH_TIMEOUT < 30  # /slow sleeps 30 s


def test_top_level_image_errors_name_images_k(vision_stack):
    body = {"messages": [{"role": "user", "content": "hi"}], "images": [data_url(image_bytes("red")), "data:image/png;base64,@@"],
            "max_tokens": 2}
    assert_error(post(vision_stack, body), 400, "invalid_image_url", param="images[1]")


def test_the_worker_keeps_serving_after_bad_media(vision_stack):
    bad = [with_image(data_url(truncated_jpeg(), "image/jpeg")), with_image("data:,nope")]
    for body in bad:
        assert post(vision_stack, body).status_code == 400
    # ignore_eos: the random-weight model may sample its end token early
    good = post(vision_stack, {**with_image(data_url(image_bytes("blue"))), "ignore_eos": True})
    assert good.status_code == 200, good.text
    assert good.json()["usage"]["completion_tokens"] == 4
    assert all(w.alive() for w in vision_stack.workers)
    stats = vision_stack.worker_stats()[0]
    assert stats["errors"] == 0 and stats["rejected"] >= 1


def test_image_to_a_text_only_model(tiny_stack):
    """The gateway knows from the handshake that the model has no vision."""
    message = assert_error(post(tiny_stack, with_image(data_url(image_bytes("red")))), 400, "unsupported_content")
    assert "does not accept images" in message
    r = post(tiny_stack, {"messages": [{"role": "user", "content": "still there?"}], "max_tokens": 2})
    assert r.status_code == 200


def test_video_to_a_text_only_model(tiny_stack):
    body = with_image(data_url(video_bytes(), "video/mp4"), "video_url")
    assert_error(post(tiny_stack, body), 400, "unsupported_content")


@pytest.mark.e2e  # starts a child process
def test_image_part_sent_straight_to_a_text_worker_is_refused_by_the_worker(tiny_model_path, log_dir):
    """Without the gateway's early check (e.g. another gateway version), the
    text worker itself refuses, with the same kind of 400."""
    import zmq

    from protocol.codec import decode_from_worker, encode
    from protocol.messages import PROTOCOL_VERSION, ChatRequest, Hello, SamplingParams, StepOutputs
    from tests.support.processes import start_worker

    worker, address = start_worker(tiny_model_path, log_dir, name="text-worker")
    try:
        ctx: zmq.Context = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.connect(address)
        sock.send(encode(Hello(protocol_version=PROTOCOL_VERSION, gateway_id="test")))
        assert sock.poll(120_000), worker.log()[-2000:]
        sock.recv()  # WorkerInfo
        req = ChatRequest(request_id="r1", messages=with_image(data_url(image_bytes("red")))["messages"],
                          sampling=SamplingParams(max_tokens=2))
        sock.send(encode(req))
        assert sock.poll(60_000)
        reply = decode_from_worker(sock.recv())
        assert isinstance(reply, StepOutputs), reply
        out = reply.outputs[0]
        assert out.finish_reason == "error" and out.error is not None and out.error.status == 400
        assert "does not accept images" in out.error.message
        sock.close(0)
    finally:
        worker.stop()
