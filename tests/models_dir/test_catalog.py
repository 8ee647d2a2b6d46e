"""What `--models-dir` finds in a folder (pure: files only, no model loaded)."""

from __future__ import annotations

from pathlib import Path

from worker.model_catalog import scan


def mlx_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"x" * 100)
    return path


def test_folders_files_and_nesting(tmp_path):
    mlx_folder(tmp_path / "Qwen2.5-7B-Instruct-4bit")
    (tmp_path / "phi-4.Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 50)
    mlx_folder(tmp_path / "lmstudio-community" / "Llama-3.2-1B" / "mlx")  # publisher/repo/model: three levels
    (tmp_path / "bartowski" / "gemma-2-2b-GGUF").mkdir(parents=True)
    (tmp_path / "bartowski" / "gemma-2-2b-GGUF" / "gemma-2-2b-it-Q6_K.gguf").write_bytes(b"GGUF")
    (tmp_path / "bartowski" / "gemma-2-2b-GGUF" / "mmproj-model-f16.gguf").write_bytes(b"GGUF")  # a projector
    (tmp_path / "big-00001-of-00002.gguf").write_bytes(b"GGUF")  # a split file
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / ".hidden.gguf").write_bytes(b"GGUF")
    (tmp_path / "half-download").mkdir()
    (tmp_path / "half-download" / "config.json").write_text("{}")  # no weights (yet): not a model
    found = scan(tmp_path)
    assert sorted(found) == ["Qwen2.5-7B-Instruct-4bit", "gemma-2-2b-it-Q6_K", "mlx", "phi-4.Q4_K_M"]
    assert found["phi-4.Q4_K_M"].size_bytes == 54
    assert found["Qwen2.5-7B-Instruct-4bit"].size_bytes == 100
    assert found["mlx"].path == tmp_path / "lmstudio-community" / "Llama-3.2-1B" / "mlx"


def test_a_duplicate_id_keeps_the_first(tmp_path):
    mlx_folder(tmp_path / "a" / "same")
    mlx_folder(tmp_path / "b" / "same")
    assert scan(tmp_path)["same"].path == tmp_path / "a" / "same"


def test_missing_or_unreadable_folder_is_empty(tmp_path):
    assert scan(tmp_path / "nope") == {}
