"""The tiny builder's registry of arches, without torch: `make-tiny-model --help` reads it at once."""

from __future__ import annotations

ARCHES: tuple[str, ...] = ("sdxl", "sd15")
#: Tiny Flux pipelines (tiny/flux.py); folders only, and not in ARCHES, whose users are SD-only.
FLUX_ARCHES: tuple[str, ...] = ("flux-dev", "flux-schnell")
#: The other families' tiny models: arch -> the tiny/ module whose make_tiny(arch, out_dir) writes
#: it as a diffusers folder ("flux" is FLUX.1-dev, the issue's name for it).
FAMILY_ARCHES: dict[str, str] = {"flux": "flux", "flux-dev": "flux", "flux-schnell": "flux", "flux-fill": "flux",
                                  "wan21": "wan", "wan22": "wan", "wan22-i2v": "wan", "wan21-i2v": "wan", "wan22-ti2v": "wan",
                                  "hidream": "hidream", "hidream-full": "hidream", "hidream-dev": "hidream", "hidream-fast": "hidream"}
#: Everything make_tiny_model writes.
MODEL_ARCHES: tuple[str, ...] = ARCHES + tuple(FAMILY_ARCHES)
#: Arches that can also be written as one original-layout (civitai-style) .safetensors file.
SINGLE_FILE_ARCHES: tuple[str, ...] = ARCHES
