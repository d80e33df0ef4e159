"""Loading ControlNets: ControlNetModel / FluxControlNetModel from a diffusers folder, or a
single-file ControlNet (original or diffusers key layout) with a config made from its shapes.

The weights are cache entries like any component: loaded once, shared by content, pinned while a
job uses them. Planning and running are in managers.controlnet.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import ModelLoadFailed, Unsupported, WorkerError
from . import fingerprint
from .components import ComponentManager
from .memory import CacheEntry

if TYPE_CHECKING:
    from .controlnet import ControlSpec

_LDM_PREFIX = "control_model."  # original-layout ControlNets saved inside a whole checkpoint


# ---- loading --------------------------------------------------------------------------------------


class ControlNetManager(ComponentManager):
    """ControlNetModel from a diffusers folder (config.json + weights) or a single file."""

    names = ("controlnet",)

    def load_spec(self, spec: "ControlSpec", dtype: str) -> CacheEntry:
        return self.load_standalone(spec.path, spec.model_id, dtype, spec.base_model)

    def load_standalone(self, path: Path, model_id: str, dtype: str, base_model: str = "unknown") -> CacheEntry:
        if path.is_dir():
            cls = "FluxControlNetModel" if _folder_class(path) == "FluxControlNetModel" else "ControlNetModel"
            return self.load(path, "diffusers", cls, dtype, model_id, "controlnet")
        try:
            key = fingerprint.of_file(path, f"controlnet-file:{dtype}")
        except OSError as exc:
            raise ModelLoadFailed(f"ControlNet {model_id!r}: cannot read {path}: {exc}") from exc
        return self.cached(
            key, model_id, lambda: load_single_file(path, self._torch_dtype(dtype), base_model).eval(),
            lambda net: self.entry(key, "controlnet", net, dtype, path, model_id),
            label=lambda _: f"ControlNet {model_id}",
            failure=lambda exc: (
                f"ControlNet {model_id!r} could not be loaded from {path.name}: {type(exc).__name__}: {exc}; "
                "a diffusers folder (config.json + weights) always loads"
            ),
            passes=(WorkerError,),
        )

    def loaded(self) -> list[CacheEntry]:
        return [e for e in self.memory.entries() if e.component == "controlnet"]


def _folder_class(path: Path) -> str:
    """The _class_name of a ControlNet folder's config.json ("" when unreadable: the load says why)."""
    try:
        return str(json.loads((path / "config.json").read_text(encoding="utf-8")).get("_class_name", ""))
    except (OSError, ValueError, AttributeError):
        return ""


# ---- single files ---------------------------------------------------------------------------------

_HINT_RE = re.compile(r"^input_hint_block\.(\d+)\.weight$")
_COND_BLOCK_RE = re.compile(r"^controlnet_cond_embedding\.blocks\.(\d+)\.weight$")
_LDM_ATTN_RE = re.compile(r"^input_blocks\.(\d+)\.1\.(?:transformer_blocks\.(\d+)\.|proj_in\.)")
_DIFFUSERS_ATTN_RE = re.compile(r"^down_blocks\.(\d+)\.attentions\.\d+\.(?:transformer_blocks\.(\d+)\.|proj_in\.)")


def _read_state(path: Path) -> dict[str, Any]:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)  # pickles only with --allow-pickle (plan)
    return state.get("state_dict", state) if isinstance(state, dict) else {}


def single_file_config(state: Mapping[str, Any], base_model: str = "unknown") -> dict[str, Any]:
    """A ControlNetModel config for a single-file ControlNet (original or diffusers key layout).

    The UNet part comes from the packaged UNet config of its family (SD 1.5 or SDXL, full size
    or tiny); the conditioning embedding's channels and the per-level transformer depth (SDXL
    ControlNets come in several sizes) are read from the tensor shapes.
    """
    import inspect

    from diffusers import ControlNetModel

    from .single_file import CONFIGS_ROOT

    shapes = {k.removeprefix(_LDM_PREFIX): tuple(v.shape) for k, v in state.items()}
    original = any(k.startswith("input_hint_block.") for k in shapes)
    sdxl = any(k.startswith(("label_emb.", "add_embedding.")) for k in shapes)
    context = next((shape[1] for k, shape in shapes.items() if k.endswith("attn2.to_k.weight")), None)
    if base_model in ("sdxl", "pony"):
        sdxl = True
    elif base_model == "sd_2" or (not sdxl and context == 1024):
        raise Unsupported("single-file SD 2.x ControlNets are not supported; use its diffusers folder")
    elif base_model not in ("sd_1_5", "sd", "unknown"):
        raise Unsupported(f"single-file {base_model} ControlNets are not supported; use its diffusers folder")
    conv_in = shapes.get("input_blocks.0.0.weight" if original else "conv_in.weight")
    if conv_in is None:
        raise ModelLoadFailed("not a ControlNet of the SD/SDXL UNet layout (no conv_in)")
    config_set = ("sdxl" if sdxl else "sd15") if conv_in[0] == 320 else ("tiny-sdxl" if sdxl else "tiny-sd15")
    unet = json.loads((CONFIGS_ROOT / config_set / "unet" / "config.json").read_text(encoding="utf-8"))
    accepted = set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
    cfg: dict[str, Any] = {k: v for k, v in unet.items() if k in accepted}

    if original:
        hint = sorted((int(m.group(1)), shapes[k]) for k in shapes if (m := _HINT_RE.match(k)))
        outs = [shape[0] for _, shape in hint]
        first_in = hint[0][1][1] if hint else 3
    else:
        blocks = sorted((int(m.group(1)), shapes[k]) for k in shapes if (m := _COND_BLOCK_RE.match(k)))
        head = shapes.get("controlnet_cond_embedding.conv_in.weight")
        outs = ([head[0]] if head else []) + [shape[0] for _, shape in blocks] + [0]  # + conv_out
        first_in = head[1] if head else 3
    if len(outs) < 2:
        raise ModelLoadFailed("not a ControlNet: no conditioning embedding (input_hint_block) found")
    cfg["conditioning_embedding_out_channels"] = outs[:-1][::2]
    cfg["conditioning_channels"] = first_in

    # Transformer depth per down level: the blocks under each level's attentions (0 where a
    # level has attentions with no transformer blocks, as in diffusers' "small" SDXL ControlNets).
    layers = int(cfg["layers_per_block"])
    depth: dict[int, int] = {}
    for k in shapes:
        if m := _LDM_ATTN_RE.match(k):
            level = (int(m.group(1)) - 1) // (layers + 1)
        elif m := _DIFFUSERS_ATTN_RE.match(k):
            level = int(m.group(1))
        else:
            continue
        blocks = int(m.group(2)) + 1 if m.group(2) is not None else 0
        depth[level] = max(depth.get(level, 0), blocks)
    levels = len(cfg["down_block_types"])
    per_level = [depth.get(level, 1) for level in range(levels)]
    cfg["transformer_layers_per_block"] = per_level[0] if len(set(per_level)) == 1 else per_level
    cfg["_class_name"] = "ControlNetModel"
    return cfg


def load_single_file(path: Path, torch_dtype: Any, base_model: str = "unknown") -> Any:
    """ControlNetModel.from_single_file, offline, with a config made for the file (no Hub lookup)."""
    from diffusers import ControlNetModel

    state = _read_state(path)
    cfg = single_file_config(state, base_model)
    with tempfile.TemporaryDirectory(prefix="sdworker-controlnet-") as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        return ControlNetModel.from_single_file(state, config=tmp, local_files_only=True, torch_dtype=torch_dtype)
