"""The vision decode path against mlx-vlm's own forward pass, in process.

A vision sequence is prefilled here (vision tower, chunked prompt, keys
re-rotated by -rope_delta) and then decoded in the worker's batch (worker/batch.py) next
to a text sequence. Its log-probabilities must equal those of mlx-vlm's
full, uncached forward pass over the same tokens — and must not without
the re-rotation (so the test can tell).
"""

from __future__ import annotations

import pytest

mx = pytest.importorskip("mlx.core")

from tests.vision.samples import image_bytes  # noqa: E402

STEPS = 5


@pytest.fixture(scope="module")
def vlm(tiny_vlm_path):
    from mlx_vlm import load

    return load(str(tiny_vlm_path))


def _inputs(processor, size=(200, 120)):
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(image_bytes("noise", size=size, seed=5))).convert("RGB")
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    text = processor.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return processor(images=[img], text=[text], add_special_tokens=False)


def _reference(model, inputs, tokens):
    """mlx-vlm's forward over the whole sequence, no cache, for each step."""
    seq, out = inputs["input_ids"], []
    for t in tokens:
        lm = model.language_model
        lm._rope_deltas, lm._position_ids = None, None  # its per-generation state
        logits = model(seq, pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"]).logits[0, -1]
        out.append(logits - mx.logsumexp(logits))
        seq = mx.concatenate([seq, mx.array([[t]])], axis=1)
    return out


def _batched(model, processor, inputs, *, rerotate: bool, chunk: int):
    from worker.batch import Batch, SequenceSpec
    from worker.vision.batch_model import BatchView
    from worker.vision.prefill import VisionPrefiller

    view = BatchView(model)
    pre = VisionPrefiller(model, view.make_cache)
    job = pre.encode(inputs["input_ids"], inputs["pixel_values"], {"image_grid_thw": inputs["image_grid_thw"]})
    assert job.delta < 0  # the image really moves the positions
    if not rerotate:
        job.delta = 0
    for _ in range(10_000):  # a bound: one chunk of the prompt per step
        if pre.step(job, chunk):
            break
    else:
        raise AssertionError("the vision prefill never finished")
    cache, last = pre.finish(job)
    gen = Batch(view, eos_token_ids=[], max_running=4, prefill_chunk=2048)
    text = processor.tokenizer.apply_chat_template([{"role": "user", "content": "Hello there"}], tokenize=False,
                                                   add_generation_prompt=True)
    gen.add(SequenceSpec(processor.tokenizer.encode(text), max_tokens=STEPS))  # a text neighbour in the batch
    uid = gen.add(SequenceSpec([last], max_tokens=STEPS, cache=cache, logprobs=True))
    tokens: list[int] = []
    logprobs = []
    for _ in range(STEPS * 20):  # a bound: prefill takes a few steps, then one token each
        if len(tokens) >= STEPS:
            break
        for r in gen.step().tokens:
            if r.uid == uid:
                tokens.append(r.token)
                logprobs.append(r.logprobs)
    assert len(tokens) == STEPS, f"only {len(tokens)} tokens decoded"
    return tokens, logprobs


@pytest.mark.parametrize("chunk", [7, 4096])
def test_batched_vision_decode_equals_the_full_forward(vlm, chunk):
    model, processor = vlm
    inputs = _inputs(processor)
    tokens, logprobs = _batched(model, processor, inputs, rerotate=True, chunk=chunk)
    for got, want in zip(logprobs, _reference(model, inputs, tokens)):
        assert float(mx.max(mx.abs(got - want))) < 1e-3


def test_without_rerotation_the_decode_is_wrong(vlm):
    model, processor = vlm
    inputs = _inputs(processor)
    tokens, logprobs = _batched(model, processor, inputs, rerotate=False, chunk=4096)
    worst = max(float(mx.max(mx.abs(g - w))) for g, w in zip(logprobs, _reference(model, inputs, tokens)))
    assert worst > 0.1


def test_sliced_vision_tower_equals_mlx_vlm(vlm):
    """Slice by slice (a few query rows at a time, two images) the tower
    gives mlx-vlm's own result."""
    import io

    from PIL import Image

    from worker.vision.sliced_encoder import SlicedEncoder, supports

    model, processor = vlm
    assert supports(model.vision_tower)
    images = [Image.open(io.BytesIO(image_bytes("noise", size=(300, 200), seed=1))).convert("RGB"),
              Image.open(io.BytesIO(image_bytes("red", size=(120, 90)))).convert("RGB")]
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "x"}]}]
    text = processor.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    inputs = processor(images=images, text=[text])
    want = model.vision_tower(inputs["pixel_values"], inputs["image_grid_thw"])
    encoder = SlicedEncoder(model.vision_tower, rows=37)
    state = encoder.start(inputs["pixel_values"], inputs["image_grid_thw"])
    slices, got = 0, None
    for _ in range(10_000):  # a bound: one slice of rows per step
        got = encoder.step(state)
        slices += 1
        if got is not None:
            break
    assert got is not None, "the sliced encoder never finished"
    assert slices > 2 * len(model.vision_tower.blocks)  # really sliced
    assert float(mx.max(mx.abs(got - want))) < 1e-4
