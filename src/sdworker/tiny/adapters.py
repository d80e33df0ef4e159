"""Tiny LoRA and textual-inversion files for the tiny models, written the way real tools write them.

* :func:`make_tiny_kohya_lora`: kohya sd-scripts / civitai layout. Every ``nn.Linear`` (and 1x1
  ``Conv2d``) inside the U-Net's transformer blocks (kohya's ``Transformer2DModel`` target) and
  every CLIP attention / MLP projection, named ``lora_unet_<module path with _>`` and
  ``lora_te_`` (SD 1.5) / ``lora_te1_`` + ``lora_te2_`` (SDXL), each with ``.lora_down.weight``
  ``[rank, in]``, ``.lora_up.weight`` ``[out, rank]`` and ``.alpha``. SD 1.5 U-Net modules keep
  diffusers' names (sd-scripts builds a diffusers-like U-Net for SD 1.x); SDXL ones use the
  original SGM names (``input_blocks_4_1_...``, ``middle_block_1_...``, ``output_blocks_0_1_...``)
  as sd-scripts' SDXL trainer does. Training metadata names the base (``ss_base_model_version``).
* :func:`make_tiny_peft_lora`: diffusers / PEFT layout (``unet.<module>.lora_A.weight``,
  ``text_encoder.text_model.<module>.lora_B.weight``), as ``save_lora_weights`` writes it.
* :func:`make_tiny_embedding`: A1111 ``emb_params`` (SD 1.5) or ``clip_l`` + ``clip_g`` (SDXL).

Weights are random under a fixed seed (the caller's RNG is left alone) and scaled so a LoRA at
weight 1 changes a tiny model's image visibly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from . import builder

#: What sd-scripts writes for the base (kohya's ``ss_base_model_version``).
_KOHYA_BASE = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}
#: The text encoders per arch: (kohya prefix, diffusers prefix, pad token of the config).
_ENCODERS = {
    "sd15": (("lora_te", "text_encoder", "eos"),),
    "sdxl": (("lora_te1", "text_encoder", "eos"), ("lora_te2", "text_encoder_2", "bang")),
}
_TE_TARGETS = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")


def _check_arch(arch: str) -> None:
    if arch not in builder.ARCHES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {builder.ARCHES}")


def unet_config(arch: str) -> dict[str, Any]:
    _check_arch(arch)
    return dict(builder.SDXL_UNET if arch == "sdxl" else builder.SD15_UNET)


def _unet_targets(arch: str) -> list[tuple[str, tuple[int, ...]]]:
    """(diffusers module path, weight shape) of kohya's U-Net targets in the tiny U-Net."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config(arch))
    out = []
    for name, module in unet.named_modules():
        if ".attentions." not in name:
            continue  # kohya's LoRA targets the transformer (attention) blocks only
        if isinstance(module, torch.nn.Linear) or (
            isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) == (1, 1)
        ):
            out.append((name, tuple(module.weight.shape)))
    return out


def _te_targets(pad: str) -> list[tuple[str, tuple[int, int]]]:
    """(module path as transformers 4 named it, with ``text_model.``, weight shape)."""
    from transformers import CLIPTextModel

    from . import tokenizer as tok

    config = builder._text_config(tok.PAD_EOS if pad == "eos" else tok.PAD_BANG)
    with torch.device("meta"):
        te = CLIPTextModel(config)
    out = []
    for name, module in te.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(_TE_TARGETS):
            path = name if name.startswith("text_model.") else f"text_model.{name}"
            out_f, in_f = module.weight.shape
            out.append((path, (out_f, in_f)))
    return out


def sgm_name(diffusers_name: str, layers_per_block: int) -> str:
    """A diffusers U-Net attention module path in the original SGM/LDM layout (what kohya SDXL uses)."""
    parts = diffusers_name.split(".")
    if parts[0] == "down_blocks" and parts[2] == "attentions":
        block = 1 + int(parts[1]) * (layers_per_block + 1) + int(parts[3])
        head = ["input_blocks", str(block), "1"]
    elif parts[0] == "up_blocks" and parts[2] == "attentions":
        block = int(parts[1]) * (layers_per_block + 1) + int(parts[3])
        head = ["output_blocks", str(block), "1"]
    elif parts[0] == "mid_block" and parts[1] == "attentions":
        return ".".join(["middle_block", "1", *parts[3:]])
    else:
        raise ValueError(f"{diffusers_name} is not an attention module path")
    return ".".join([*head, *parts[4:]])


def _pair(gen: torch.Generator, shape: tuple[int, ...], rank: int, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(down [rank, in, ...], up [out, rank, ...]) whose product is ~``strength`` per output unit."""
    out_f, in_f = shape[0], shape[1]
    tail = tuple(shape[2:])  # (1, 1) for a 1x1 conv
    down = torch.randn((rank, in_f, *tail), generator=gen) / in_f**0.5
    up = torch.randn((out_f, rank, *tail), generator=gen) * (strength / rank**0.5)
    return down, up


def _lora_modules(arch: str, te: bool) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """(component, module path, weight shape) of every module a tiny LoRA adapts."""
    for name, shape in _unet_targets(arch):
        yield "unet", name, shape
    if te:
        for _kohya, component, pad in _ENCODERS[arch]:
            for name, shape in _te_targets(pad):
                yield component, name, shape


def _save(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None) -> Path:
    from safetensors.torch import save_file

    out = Path(path)
    if out.suffix.lower() != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out), metadata=metadata)
    return out


def make_tiny_kohya_lora(
    arch: str,
    path: str | Path,
    rank: int = 4,
    seed: int = 0,
    te: bool = True,
    strength: float = 0.5,
    alpha: float | None = None,
    unet_layout: str | None = None,
) -> Path:
    """A kohya/civitai-format LoRA for the tiny ``arch`` model; returns the file written.

    ``alpha`` defaults to ``rank / 2`` (a scale of 0.5, stored as ``.alpha`` as kohya does).
    ``unet_layout``: "diffusers" or "sgm" (default: sgm for SDXL, diffusers for SD 1.5).
    """
    _check_arch(arch)
    layout = unet_layout or ("sgm" if arch == "sdxl" else "diffusers")
    lpb = int(unet_config(arch)["layers_per_block"])
    kohya_prefix = {component: kp for kp, component, _pad in _ENCODERS[arch]}
    gen = torch.Generator().manual_seed(seed)
    a = float(alpha if alpha is not None else rank / 2)
    state: dict[str, torch.Tensor] = {}
    for component, name, shape in _lora_modules(arch, te):
        if component == "unet":
            module = sgm_name(name, lpb) if layout == "sgm" else name
            key = "lora_unet_" + module.replace(".", "_")
        else:
            key = f"{kohya_prefix[component]}_" + name.replace(".", "_")
        # alpha / rank scales the product; compensate so `strength` is what the image sees
        down, up = _pair(gen, shape, rank, strength * rank / a)
        state[f"{key}.lora_down.weight"] = down
        state[f"{key}.lora_up.weight"] = up
        state[f"{key}.alpha"] = torch.tensor(a)
    metadata = {"ss_base_model_version": _KOHYA_BASE[arch], "ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(a)}
    return _save(state, path, metadata)


def make_tiny_peft_lora(arch: str, path: str | Path, rank: int = 4, seed: int = 1, te: bool = True, strength: float = 0.5) -> Path:
    """A diffusers/PEFT-format LoRA (``lora_A`` / ``lora_B``, alpha = rank) for the tiny ``arch`` model."""
    _check_arch(arch)
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for component, name, shape in _lora_modules(arch, te):
        down, up = _pair(gen, shape, rank, strength)
        state[f"{component}.{name}.lora_A.weight"] = down
        state[f"{component}.{name}.lora_B.weight"] = up
    return _save(state, path, {"format": "pt"})


def make_tiny_embedding(arch: str, path: str | Path, vectors: int = 2, seed: int = 2, scale: float = 2.0) -> Path:
    """A textual-inversion embedding for the tiny ``arch`` model: A1111 ``emb_params`` (sd15) or
    ``clip_l`` + ``clip_g`` (sdxl), ``vectors`` vectors of the text encoders' width."""
    _check_arch(arch)
    gen = torch.Generator().manual_seed(seed)
    dim = builder.TEXT_HIDDEN_SIZE
    if arch == "sd15":
        state = {"emb_params": torch.randn((vectors, dim), generator=gen) * scale}
    else:
        state = {
            "clip_l": torch.randn((vectors, dim), generator=gen) * scale,
            "clip_g": torch.randn((vectors, dim), generator=gen) * scale,
        }
    return _save(state, path, None)
