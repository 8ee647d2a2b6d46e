"""--kv-bits on the real default model (in-process): the stored prefix is
smaller, and a turn that reuses it still answers."""

from __future__ import annotations

import pytest

from tests.kv.inproc import make_kv, make_scheduler, request, run


@pytest.fixture(scope="module")
def real():
    from worker.models import ensure_default_model, load_model

    return load_model(str(ensure_default_model()))


def two_turns(loaded, kv):
    s = make_scheduler(loaded, kv)
    first = [{"role": "system", "content": "You are a concise assistant."}, {"role": "user", "content": "Name a planet."}]
    r1 = run(s, [request("a", first, max_tokens=8, conversation="c")])["a"]
    second = first + [{"role": "assistant", "content": r1.text}, {"role": "user", "content": "And another?"}]
    return run(s, [request("b", second, max_tokens=8, conversation="c")])["b"]


def test_quantized_storage_is_smaller_and_reused(real, tmp_path):
    full, quant = make_kv(tmp_path / "full", real), make_kv(tmp_path / "quant", real, kv_bits=8)
    a, b = two_turns(real, full), two_turns(real, quant)
    assert b.mode == "hit" and b.cached == a.cached > 0
    assert b.text.strip()
    assert quant.summary()["kv_storage"] == "8-bit"
    # float32 rows of 64 values: 256 bytes; 8-bit: 64 + a float32 scale and bias = 72; 4-bit: 32 + 8 = 40
    four = make_kv(tmp_path / "four", real, kv_bits=4)
    tokens = full.store.get("c").tokens
    four.tree.insert(tokens, full.tree.cache_of(tokens))
    per_token = [kv.tree.nbytes / kv.tree.tokens for kv in (full, quant, four)]
    assert per_token[1] / per_token[0] == pytest.approx(72 / 256, rel=0.01)
    assert per_token[2] / per_token[0] == pytest.approx(40 / 256, rel=0.01)
