"""Tiny models as ONE original-layout (LDM/SGM) ``.safetensors`` file, like civitai checkpoints.

Real community checkpoints keep the key layout of the original training code
(``model.diffusion_model.input_blocks...``, ``first_stage_model.encoder.down...``,
OpenCLIP's fused ``in_proj_weight``), not diffusers' folder layout. To test the
single-file loader without downloading a 2-7 GB file we convert the tiny diffusers
pipeline (same weights as the folder form, see ``builder.build_pipeline``) back into
that layout. The mapping is the inverse of what diffusers' ``single_file_utils``
reads, written here from the same facts; the conversion is strict: a key it does not
know raises instead of being dropped, so a silent partial checkpoint cannot happen.

The tiny *config sets* (``sdworker/model_configs/tiny-*``) are generated from the same
builder with :func:`write_config_set`; a test keeps the packaged copies in sync.

The ``*-clip`` arches are the same tiny models with text encoders sized to the real CLIP
vocabulary (49408 tokens, CLIP's special-token ids) and no tokenizer of their own: a
small file that needs the real tokenizers exactly as a civitai checkpoint does.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from . import tokenizer as tok
from ..atomic import write_atomic
from ..managers.clip_tokenizers import CLIP_VOCAB_SIZE
from .builder import _TOKENIZER_PADS, ARCHES, SEEDS, build_pipeline

#: Prefixes of the original checkpoint formats (SD 1.x: ldm, SDXL: sgm).
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

Tensors = dict[str, torch.Tensor]
#: One key only: safetensors writes metadata from a hash map, so several keys come out in
#: random order and two builds would differ byte-wise.
_METADATA = {"format": "pt"}
#: Tiny models with the real CLIP vocabulary (see the module doc).
CLIP_VOCAB_ARCHES: tuple[str, ...] = tuple(f"{a}-clip" for a in ARCHES)
_CLIP_IDS = {"bos_token_id": CLIP_VOCAB_SIZE - 2, "eos_token_id": CLIP_VOCAB_SIZE - 1}

# --------------------------------------------------------------------------- UNet

_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_BLOCK_RE = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_MID_RE = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _resnet_rest(rest: str, table: Mapping[str, str]) -> str:
    head, _, tail = rest.partition(".")
    if head not in table:
        raise KeyError(f"unknown resnet parameter {rest!r}")
    return f"{table[head]}.{tail}"


def _unet_key(key: str, layers: int, up_has_attn: Mapping[int, bool]) -> str:
    """One diffusers UNet key -> its ``input_blocks/middle_block/output_blocks`` name.

    The original UNet is a flat list of blocks: ``input_blocks.0`` is conv_in, then each
    down level holds ``layers`` (resnet[, transformer]) entries and, except the last
    level, one downsampler entry; output levels hold ``layers + 1`` entries with the
    upsampler appended to the last one (after the transformer when there is one).
    """
    module, _, param = key.rpartition(".")
    if module in _UNET_FIXED:
        return f"{_UNET_FIXED[module]}.{param}"
    if m := _MID_RE.match(key):
        kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "resnets":
            return f"middle_block.{2 * idx}.{_resnet_rest(rest, _UNET_RESNET)}"
        return f"middle_block.1.{rest}"  # the single transformer between the two resnets
    if m := _BLOCK_RE.match(key):
        side, level, kind, idx, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if side == "down_blocks":
            first = 1 + level * (layers + 1)
            if kind == "resnets":
                return f"input_blocks.{first + idx}.0.{_resnet_rest(rest, _UNET_RESNET)}"
            if kind == "attentions":
                return f"input_blocks.{first + idx}.1.{rest}"
            if kind == "downsamplers" and rest.startswith("conv."):
                return f"input_blocks.{first + layers}.0.op.{rest[len('conv.'):]}"
        else:
            first = level * (layers + 1)
            if kind == "resnets":
                return f"output_blocks.{first + idx}.0.{_resnet_rest(rest, _UNET_RESNET)}"
            if kind == "attentions":
                return f"output_blocks.{first + idx}.1.{rest}"
            if kind == "upsamplers" and rest.startswith("conv."):
                slot = 2 if up_has_attn.get(level) else 1
                return f"output_blocks.{first + layers}.{slot}.{rest}"
    raise KeyError(f"no original-layout name for UNet key {key!r}")


def unet_to_original(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> Tensors:
    """Diffusers UNet2DConditionModel weights -> original keys (no prefix).

    Attention/transformer internals (``transformer_blocks.N.attn1.to_q`` ...) are named
    the same in both layouts, so only the block addressing changes.
    """
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError("per-level layers_per_block has no original single-file layout")
    up_has_attn = {i: t.startswith("CrossAttn") for i, t in enumerate(config["up_block_types"])}
    return {_unet_key(k, layers, up_has_attn): v for k, v in state.items()}


# --------------------------------------------------------------------------- VAE

_VAE_FIXED = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_BLOCK_RE = re.compile(r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_VAE_SAME = ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out", "quant_conv", "post_quant_conv")
_VAE_MID_RE = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _vae_key(key: str, num_up: int) -> tuple[str, bool]:
    """One diffusers VAE key -> (original key, is a mid-attention linear weight).

    The original decoder numbers its ``up`` levels from the lowest resolution upwards
    (the reverse of diffusers' ``up_blocks``); the mid attention uses 1x1 convs.
    """
    module, _, param = key.rpartition(".")
    if module in _VAE_FIXED:
        return f"{_VAE_FIXED[module]}.{param}", False
    if m := _VAE_MID_RE.match(key):
        side, kind, idx, rest = m.groups()
        if kind == "resnets":
            return f"{side}.mid.block_{int(idx) + 1}.{_resnet_rest(rest, _VAE_RESNET)}", False
        for new, old in _VAE_ATTN.items():
            if rest.startswith(new + "."):
                tail = rest[len(new) + 1 :]
                return f"{side}.mid.attn_1.{old}.{tail}", old != "norm" and tail == "weight"
        raise KeyError(f"unknown VAE attention parameter {key!r}")
    if m := _VAE_BLOCK_RE.match(key):
        side, _, level_s, kind, idx, rest = m.groups()
        level = int(level_s)
        if side == "encoder" and kind == "resnets":
            return f"encoder.down.{level}.block.{idx}.{_resnet_rest(rest, _VAE_RESNET)}", False
        if side == "encoder" and kind == "downsamplers":
            return f"encoder.down.{level}.downsample.{rest}", False
        ldm_level = num_up - 1 - level
        if side == "decoder" and kind == "resnets":
            return f"decoder.up.{ldm_level}.block.{idx}.{_resnet_rest(rest, _VAE_RESNET)}", False
        if side == "decoder" and kind == "upsamplers":
            return f"decoder.up.{ldm_level}.upsample.{rest}", False
    if module in _VAE_SAME:
        return key, False
    raise KeyError(f"no original-layout name for VAE key {key!r}")


def vae_to_original(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> Tensors:
    """Diffusers AutoencoderKL weights -> original keys (no prefix), attention as 1x1 convs."""
    num_up = len(config["up_block_types"])
    out: Tensors = {}
    for key, value in state.items():
        new, is_linear = _vae_key(key, num_up)
        out[new] = value[:, :, None, None] if is_linear and value.ndim == 2 else value
    return out


# --------------------------------------------------------------------------- text encoders


def clip_to_original(state: Mapping[str, torch.Tensor]) -> Tensors:
    """HF CLIPTextModel weights -> ``text_model.*`` keys (the layout under ``transformer.``).

    transformers >= 5.6 flattened CLIPTextModel (no ``text_model.`` level); the original
    checkpoints always have it.
    """
    out: Tensors = {}
    for key, value in state.items():
        if key.startswith("text_projection"):
            raise KeyError("a CLIP-L text encoder in SD 1.5 / SDXL has no text projection")
        out[key if key.startswith("text_model.") else f"text_model.{key}"] = value
    return out


_OPEN_CLIP_FIXED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_QKV = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v"}
_LAYER_RE = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def open_clip_to_original(state: Mapping[str, torch.Tensor]) -> Tensors:
    """HF CLIPTextModelWithProjection weights -> OpenCLIP keys (no prefix).

    OpenCLIP fuses q/k/v into one ``in_proj`` (rows stacked q, k, v) and applies the
    projection as ``x @ text_projection``, i.e. the transpose of the HF linear weight.
    """
    out: Tensors = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in _OPEN_CLIP_FIXED:
            out[_OPEN_CLIP_FIXED[key]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif m := _LAYER_RE.match(key):
            layer, module, param = int(m.group(1)), m.group(2), m.group(3)
            if module in _QKV:
                qkv.setdefault((layer, param), {})[_QKV[module]] = value
            elif module in _OPEN_CLIP_LAYER:
                out[f"transformer.resblocks.{layer}.{_OPEN_CLIP_LAYER[module]}.{param}"] = value
            else:
                raise KeyError(f"no OpenCLIP name for {key!r}")
        else:
            raise KeyError(f"no OpenCLIP name for {key!r}")
    for (layer, param), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"layer {layer} {param}: q/k/v incomplete")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


# --------------------------------------------------------------------------- whole checkpoints


def _prefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> Tensors:
    return {prefix + k: v for k, v in tensors.items()}


def pipeline_to_original(pipe: Any) -> Tensors:
    """An SD 1.5 / SDXL diffusers pipeline -> one original-layout state dict."""
    ckpt: Tensors = {}
    ckpt.update(_prefixed(UNET_PREFIX, unet_to_original(pipe.unet.state_dict(), pipe.unet.config)))
    ckpt.update(_prefixed(VAE_PREFIX, vae_to_original(pipe.vae.state_dict(), pipe.vae.config)))
    if getattr(pipe, "text_encoder_2", None) is not None:
        ckpt.update(_prefixed(SDXL_CLIP_L_PREFIX, clip_to_original(pipe.text_encoder.state_dict())))
        ckpt.update(_prefixed(SDXL_OPEN_CLIP_PREFIX, open_clip_to_original(pipe.text_encoder_2.state_dict())))
    else:
        ckpt.update(_prefixed(SD15_CLIP_PREFIX, clip_to_original(pipe.text_encoder.state_dict())))
    return ckpt


def single_file_path(out: str | Path) -> Path:
    """``out`` itself when it ends in .safetensors, else ``out`` + ``.safetensors``."""
    path = Path(out).absolute()
    return path if path.suffix.lower() == ".safetensors" else path.with_name(path.name + ".safetensors")


def save_atomic(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically (sdworker.atomic): never half-written."""
    from safetensors.torch import save

    if path.is_dir():
        raise FileExistsError(f"{path} is a folder; refusing to replace it with a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    # own storage per tensor: safetensors refuses shared/non-contiguous memory
    owned = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return write_atomic(path, save(owned, metadata=metadata))


def _with_clip_vocab(pipe: Any) -> Any:
    """Swap the text encoders for ones of the same tiny size over CLIP's 49408-token vocabulary."""
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name, None)
        if encoder is None:
            continue
        config = type(encoder.config).from_dict(
            {**encoder.config.to_dict(), "vocab_size": CLIP_VOCAB_SIZE, **_CLIP_IDS, "pad_token_id": 0 if name == "text_encoder_2" else CLIP_VOCAB_SIZE - 1}
        )
        torch.manual_seed(SEEDS[name])
        pipe.register_modules(**{name: type(encoder)(config).eval()})
    return pipe


def _build(arch: str) -> Any:
    base = arch.removesuffix("-clip") if arch in CLIP_VOCAB_ARCHES else arch
    if base not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHES + CLIP_VOCAB_ARCHES}")
    with tempfile.TemporaryDirectory(prefix="sdworker-tiny-") as scratch, torch.random.fork_rng(devices=[]):
        pipe = build_pipeline(base, scratch)
        return _with_clip_vocab(pipe) if base != arch else pipe


def make_tiny_single_file(arch: str, out: str | Path) -> Path:
    """Write the tiny ``arch`` model as one original-layout checkpoint; returns its path.

    Same weights as ``make_tiny_model(arch, folder)``: both come from build_pipeline.
    ``arch`` may also be one of :data:`CLIP_VOCAB_ARCHES` (single files only).
    """
    path = single_file_path(out)
    ckpt = pipeline_to_original(_build(arch))
    return save_atomic(ckpt, path, _METADATA)


def make_tiny_vae_single_file(arch: str, path: str | Path) -> Path:
    """Write only the tiny VAE, as a standalone original-layout VAE file (no prefix).

    Standalone VAE releases (e.g. ``sdxl_vae.safetensors``) use bare ``encoder.*`` /
    ``decoder.*`` keys.
    """
    vae = _build(arch).vae
    return save_atomic(
        vae_to_original(vae.state_dict(), vae.config),
        single_file_path(path),
        _METADATA,
    )


def write_config_set(arch: str, dest: str | Path) -> Path:
    """Write the tiny ``arch`` config set (configs + tiny tokenizer, no weights) to ``dest``.

    This is what ``sdworker/model_configs/tiny-<arch>`` holds; ``dest`` is replaced whole.
    The ``*-clip`` sets hold no tokenizer: theirs is the packaged CLIP one.
    """
    pipe = _build(arch)
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    pipe.save_config(dest)  # model_index.json
    for name in ("unet", "vae", "scheduler"):
        getattr(pipe, name).save_config(dest / name)
    for name in ("text_encoder", "text_encoder_2"):
        if (encoder := getattr(pipe, name, None)) is not None:
            encoder.config.architectures = [type(encoder).__name__]  # as save_pretrained writes it
            encoder.config.save_pretrained(dest / name)
    for sub, pad in _TOKENIZER_PADS.get(arch, {}).items():
        tok.write_tokenizer_files(dest / sub, pad)
    return dest
