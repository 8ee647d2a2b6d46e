"""Every expected bad input fails with ModelLoadError and one helpful line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q

from tests.models.gguf_synth import write_llama, write_raw
from worker.models import ModelLoadError, load_model


def fails(spec, match: str, **kwargs) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model(str(spec), **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert match in message, message
    return message


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch, default_gguf, tiny_model_path):
    # Conversions attempted here must not touch the user's cache; the shared
    # fixtures are resolved first, in the real cache, so nothing is fetched twice.
    monkeypatch.setenv("KMLX_CACHE_DIR", str(tmp_path / "cache"))


def test_missing_path(tmp_path):
    fails(tmp_path / "no-such-model", "not found")
    fails("./nope/model.gguf", "not found")


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    fails(tmp_path, "not a model folder")


def test_config_without_weights(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    fails(tmp_path, "no .safetensors weights")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    fails(tmp_path, "only PyTorch weights")


def test_unknown_model_type(tiny_model_path, tmp_path):
    folder = tmp_path / "weird"
    folder.mkdir()
    for f in tiny_model_path.iterdir():
        (folder / f.name).symlink_to(f)
    (folder / "config.json").unlink()
    config = json.loads((tiny_model_path / "config.json").read_text()) | {"model_type": "no_such_arch"}
    (folder / "config.json").write_text(json.dumps(config))
    fails(folder, "no_such_arch")


def test_not_a_gguf(tmp_path):
    path = tmp_path / "random.gguf"
    path.write_bytes(os.urandom(4096))
    fails(path, "not a GGUF file")


def test_truncated_gguf(tmp_path, default_gguf):
    with open(default_gguf, "rb") as src:
        head = src.read(5_000_000)
    for size, what in ((len(head), "truncated"), (200, "truncated or corrupt")):
        path = tmp_path / f"cut-{size}.gguf"
        path.write_bytes(head[:size])
        fails(path, what)


def test_unsupported_architecture(tmp_path):
    path = write_raw(tmp_path / "mamba.gguf", "mamba", {"token_embd.weight": (Q.F32, (8, 32))},
                     {"tokenizer.ggml.model": "gpt2"})
    message = fails(path, "architecture 'mamba' is not supported")
    assert "llama, qwen2, qwen3, gemma2, gemma3, phi3" in message


def test_unsupported_tensor_type(tmp_path):
    path = write_raw(tmp_path / "iq2.gguf", "llama",
                     {"token_embd.weight": (Q.Q8_0, (8, 256)), "blk.0.ffn_down.weight": (Q.IQ2_XXS, (8, 256))},
                     {"tokenizer.ggml.model": "gpt2"})
    message = fails(path, "tensor type IQ2_XXS is not supported")
    assert "blk.0.ffn_down.weight" in message and "Q6_K" in message  # the message lists what works


def test_unexpected_tensor_is_named(tmp_path, tokenizer_meta):
    from tests.models.archs import write_model

    path = write_model(tmp_path / "extra.gguf", "qwen3", tokenizer_meta, extra={"blk.0.attn_q.bias": (64,)})
    fails(path, "unexpected tensor 'blk.0.attn_q.bias'")


def test_unsupported_tokenizer(tmp_path, tokenizer_meta):
    path = write_llama(tmp_path / "bert.gguf", tokenizer_meta, tokenizer_model="bert")
    fails(path, "tokenizer type 'bert' is not supported")


def test_bad_weights_choice(tiny_model_path):
    fails(tiny_model_path, "unknown weights 'int3'", weights="int3")


def test_offline_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    fails("kmlx-tests/no-such-repo-7f3a", "not in the local Hugging Face cache")


@pytest.mark.e2e  # starts a child process
def test_unreachable_hub_fails_fast_in_one_line(tmp_path):
    """A real attempt against an address that refuses connections (no mock)."""
    script = textwrap.dedent("""
        from worker.models import ModelLoadError, load_model
        try:
            load_model("kmlx-tests/no-such-repo-7f3a")
        except ModelLoadError as exc:
            print("ERROR:", exc)
    """)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9",
               HF_HUB_OFFLINE="0", HF_HUB_ETAG_TIMEOUT="5", KMLX_CACHE_DIR=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env=env, cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("ERROR:")]
    assert len(lines) == 1, run.stdout + run.stderr
    assert "kmlx-tests/no-such-repo-7f3a" in lines[0]
    assert "local path" in lines[0]



def test_unwritable_cache(tmp_path, monkeypatch, tokenizer_meta):
    if os.geteuid() == 0:
        blocker = tmp_path / "file-not-dir"  # root ignores permissions; a file in the way works for all
        blocker.write_text("x")
        monkeypatch.setenv("KMLX_CACHE_DIR", str(blocker / "cache"))
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        monkeypatch.setenv("KMLX_CACHE_DIR", str(tmp_path / "ro" / "cache"))
    gguf = write_llama(tmp_path / "m.gguf", tokenizer_meta, tied=True, qkv_bias=False)
    fails(gguf, "KMLX_CACHE_DIR")
