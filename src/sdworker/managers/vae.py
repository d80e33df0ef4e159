"""VAEManager: the VAE stack. Model VAEs and standalone ones, side by side in the cache.

Standalone VAEs (a diffusers `AutoencoderKL` folder or a single .safetensors file in the models
dirs) are loaded on their own and can replace a model's VAE per request. SDXL's original VAE
overflows in fp16 (NaN → black images); when running fp16 with an SDXL model, a standalone
VAE that is fp16-safe (config `force_upcast: false`, as the "sdxl-vae-fp16-fix" VAE ships) is
preferred when one is present, and otherwise the pipeline upcasts the VAE to fp32 for decoding
(diffusers' `force_upcast`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import fingerprint
from .components import ComponentManager
from .memory import CacheEntry


class VAEManager(ComponentManager):
    names = ("vae",)

    def load_standalone(self, path: Path, vae_id: str, dtype: str, base_model: str | None = None) -> CacheEntry:
        """A VAE that is not part of a model: a diffusers folder or a single file."""
        if path.is_dir():
            return self.load(path, "diffusers", "AutoencoderKL", dtype, vae_id, "vae")
        key = fingerprint.of_file(path, f"vae-file:{dtype}")

        def read() -> Any:
            from .single_file import load_single_file_vae

            return load_single_file_vae(path, self._torch_dtype(dtype), vae_config_set(path, base_model)).eval()

        return self.cached(
            key, vae_id, read, lambda vae: self.entry(key, "vae", vae, dtype, path, vae_id),
            label=lambda _: f"VAE {vae_id}",
            failure=lambda exc: f"VAE {vae_id!r} could not be loaded from {path.name}: {type(exc).__name__}: {exc}",
        )

    def loaded(self) -> list[CacheEntry]:
        return [e for e in self.memory.entries() if e.component == "vae"]


def vae_config_set(path: Path, base_model: str | None) -> str:
    """The packaged config for a VAE file: family from its detected base (SD 1.x unless SDXL),
    real or tiny from its width (a VAE file's shapes cannot tell SD 1.5 from SDXL)."""
    from .single_file import checkpoint_shapes

    shapes = checkpoint_shapes(path)
    conv = next((v for k, v in shapes.items() if k.endswith("encoder.conv_in.weight")), (128,))
    from ..families import registry

    family = registry.vae_config_layout(base_model)  # SDXL's for SDXL-family VAEs, else SD 1.x's
    return f"tiny-{family}" if conv[0] != 128 else family


def fp16_safe(vae: Any) -> bool:
    """A VAE that decodes in fp16 without overflowing (its config says it needs no upcast)."""
    return not bool(getattr(getattr(vae, "config", None), "force_upcast", True))


def folder_is_fp16_safe(path: Path) -> bool:
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8")) if path.is_dir() else {}
    except (OSError, ValueError):
        return False
    return cfg.get("force_upcast") is False or "fp16" in path.name.lower()

