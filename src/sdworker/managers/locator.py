"""Find models by id inside the models dirs, refusing anything that escapes them."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from ..paths import resolve_in_roots
from ..protocol.errors import ModelNotFound, UnsafePath, ValidationFailed

# model_index.json _class_name -> base_model (contract section 7 ids)
_PIPELINE_ARCH = {
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
    "StableDiffusionPipeline": "sd_1_5",
    "StableDiffusionImg2ImgPipeline": "sd_1_5",
    "StableDiffusionInpaintPipeline": "sd_1_5",
}


@dataclass(frozen=True)
class ModelRef:
    model_id: str
    path: Path
    pipeline_class: str
    base_model: str
    format: str = "diffusers"


def _read_index(folder: Path) -> dict:
    with open(folder / "model_index.json", "rb") as fh:
        return json.load(fh)


def _base_model(folder: Path, index: dict) -> str:
    cls = index.get("_class_name", "")
    base = _PIPELINE_ARCH.get(cls, "unknown")
    if base == "sdxl" and (index.get("text_encoder") in (None, [None, None]) or index.get("requires_aesthetics_score")):
        return "sdxl_refiner"
    if base == "sd_1_5":
        try:
            unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
            if unet_cfg.get("cross_attention_dim") == 1024:
                return "sd_2"
        except (OSError, ValueError):
            pass
    return base


class ModelLocator:
    def __init__(self, models_dirs: list[Path]):
        self.roots = [d for d in models_dirs]

    def scan(self) -> list[ModelRef]:
        refs: list[ModelRef] = []
        for root in self.roots:
            if not root.is_dir():
                continue
            for child in sorted(root.iterdir()):
                if (child / "model_index.json").is_file():
                    try:
                        refs.append(self._ref(child.name, child))
                    except (OSError, ValueError):
                        continue
        return refs

    def _ref(self, model_id: str, folder: Path) -> ModelRef:
        index = _read_index(folder)
        return ModelRef(model_id, folder, index.get("_class_name", "DiffusionPipeline"), _base_model(folder, index))

    def resolve(self, model_id: str | None, field: str = "data.model_id") -> ModelRef:
        if not model_id:
            raise ValidationFailed(
                "model_id is required (or start the worker with --default-model)",
                [{"path": field, "message": "required"}],
            )
        if not self.roots:
            raise ModelNotFound(f"model {model_id!r}: no --models-dir is configured")
        folder = resolve_in_roots(model_id, self.roots, field)
        if (folder / "model_index.json").is_file():
            return self._ref(model_id, folder)
        known = [r.model_id for r in self.scan()]
        close = difflib.get_close_matches(model_id, known, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else (f"; available: {', '.join(known[:10])}" if known else "")
        raise ModelNotFound(f"model {model_id!r} was not found in the models dirs{hint}", [{"path": field, "message": "not found"}])


__all__ = ["ModelLocator", "ModelRef", "UnsafePath"]
