"""GGUF architectures kmlx converts, one module each, all of the same shape.

Each module maps one `general.architecture` onto an mlx-lm model class
(mlx_lm/models/<model_type>.py) and provides

    MODEL_TYPE: str                         the mlx-lm module that runs it
    config(info) -> dict                    config.json for that module, from the GGUF metadata
    plan(info, config) -> list[TensorPlan]  where each GGUF tensor goes, and how it is adjusted
    SCALE_DTYPE: str (optional)             dtype of quantized layers' scales (default float16)

The modules are imported only when a file of their architecture is converted.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ModelLoadError

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")


def architecture(name: str, file_name: str = "") -> ModuleType:
    if name not in ARCHITECTURES:
        where = f"{file_name}: " if file_name else ""
        raise ModelLoadError(
            f"{where}GGUF architecture {name or '(none)'!r} is not supported "
            f"(supported: {', '.join(ARCHITECTURES)}); use an MLX or Hugging Face copy of this model"
        )
    return importlib.import_module(f"{__name__}.{name}")
