"""What `load_model` hands to the serving code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class LoadedModel:
    model: Any  # mlx nn.Module (mlx-lm model, or mlx-vlm model for vision)
    tokenizer: Any  # mlx_lm TokenizerWrapper
    processor: Any | None  # mlx-vlm processor for vision models, else None
    model_id: str  # served name: the model directory's (or .gguf file's) base name
    path: Path  # local folder the weights were loaded from
    context_length: int  # from the config; 4096 when it names none
    is_vision: bool
    weights: str  # what is in memory: "float32", "bfloat16", "q4", "q4+q8", ...

    def describe(self) -> str:
        """One line for the worker's start-up log."""
        kind = "vision" if self.is_vision else "text"
        return (
            f"{self.model_id} ({kind}, weights {self.weights}, "
            f"context {self.context_length}) from {self.path}"
        )
