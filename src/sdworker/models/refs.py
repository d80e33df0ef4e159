"""A runnable model as the locator resolves it: what families, managers and interfaces all read.

It lives here, below managers/ and families/, so both can name it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelRef:
    """A runnable model. With `transformer_file` set (managers.transformer_files), `path` is the
    companion diffusers folder that lends everything but the transformer, which the file holds."""

    model_id: str
    path: Path
    pipeline_class: str
    base_model: str
    format: str = "diffusers"
    transformer_file: Path | None = None
    components_from: str | None = None  # the companion folder's model_id, with transformer_file
    transformer_2_file: Path | None = None  # Wan 2.2 A14B's low-noise expert, with transformer_file

    def describe(self) -> dict[str, str]:
        """The model's fields in a result's `parameters`."""
        out = {"model_id": self.model_id, "base_model": self.base_model}
        if self.components_from is not None:
            out["components_from"] = self.components_from
        return out

    @property
    def source(self) -> Path:
        """What identifies the model's weights: the transformer file, or the folder / single file."""
        return self.transformer_file or self.path

    @property
    def weights_format(self) -> str:
        """How the denoiser's weights are stored on disk: gguf, or the model's format."""
        if self.transformer_file is not None and self.transformer_file.suffix.lower() == ".gguf":
            return "gguf"
        return self.format
