"""The tiny builder's registry of arches, without torch: `make-tiny-model --help` reads it at once."""

from __future__ import annotations

from ..families.registry import tiny_arches

ARCHES: tuple[str, ...] = ("sdxl", "sd15")
#: Tiny Flux pipelines (families/flux/tiny.py); folders only, and not in ARCHES, whose users are SD-only.
FLUX_ARCHES: tuple[str, ...] = ("flux-dev", "flux-schnell")
#: The other families' tiny models: arch -> the module (under sdworker) whose make_tiny(arch, out_dir)
#: writes it as a diffusers folder; each family names its own (families.base.Family.tiny_arches).
FAMILY_ARCHES: dict[str, str] = tiny_arches()
#: Everything make_tiny_model writes.
MODEL_ARCHES: tuple[str, ...] = ARCHES + tuple(FAMILY_ARCHES)
#: Arches that can also be written as one original-layout (civitai-style) .safetensors file.
SINGLE_FILE_ARCHES: tuple[str, ...] = ARCHES
