"""Single-file (civitai-style) SD 1.5 / SDXL checkpoints, loaded fully offline.

A single ``.safetensors`` checkpoint holds only weights, in the original LDM/SGM key
layout. diffusers needs a diffusers-style config folder next to it to know the
architecture; by default it downloads one from the Hub, which a headless worker must
never do. So we ship the config sets (``sdworker/model_configs/<set>``), pick the set
from the checkpoint's tensor shapes (read from the safetensors header only: no weight
is touched before we know what the file is) and hand it to ``from_single_file`` with
``local_files_only=True``.

Tokenizers are not weights and are not in the checkpoint: the real sets get theirs from
the packaged CLIP vocabulary, with files on disk as overrides (see ``clip_tokenizers``).
The tiny sets carry their own tiny tokenizer; the ``tiny-*-clip`` sets are tiny models
with the real CLIP vocabulary, so tests can load a small file the way a real one loads.

torch/diffusers/transformers are imported inside functions: detection stays cheap.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ModelLoadFailed, ModelNotFound, Unsupported, ValidationFailed, WorkerError
from ..families import registry
from ..models.safetensors_header import HeaderError, read_header
from ..paths import NotRegularFile
from .clip_tokenizers import CLIP_VOCAB_SIZE, find_tokenizer
from .pickle_files import is_pickle, pickle_state

#: the packaged sets, and their model_index.json class -> checkpoint layout, are the families'
CONFIG_SETS: tuple[str, ...] = registry.config_sets()
CONFIGS_ROOT = Path(__file__).resolve().parent.parent / "model_configs"

_UNET = "model.diffusion_model."
_CONV_IN = _UNET + "input_blocks.0.0.weight"
_ATTN2_TO_K = re.compile(r"^model\.diffusion_model\..*\.attn2\.to_k\.weight$")
_OPEN_CLIP_XL = "conditioner.embedders.1.model."
_CLIP_L_XL = "conditioner.embedders.0.transformer."
_CLIP_L_SD15 = "cond_stage_model.transformer."
_VAE_CONV_IN = ("encoder.conv_in.weight", "first_stage_model.encoder.conv_in.weight", "vae.encoder.conv_in.weight")
_TOKEN_EMBEDDING = re.compile(
    r"^(cond_stage_model|conditioner\.embedders\.0)\.transformer\.(text_model\.)?embeddings\.token_embedding\.weight$"
)

_PIPELINE_FAMILY = registry.config_set_layouts()


# --------------------------------------------------------------------------- header


def checkpoint_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the safetensors header alone (models.safetensors_header): a few
    hundred KB at most, no torch import. A pickle (allowed by the caller) is read weights-only."""
    path = Path(path)
    if is_pickle(path):
        return {k: tuple(v.shape) for k, v in pickle_state(path).items()}
    try:
        return read_header(path).shapes()
    except FileNotFoundError as exc:
        raise ModelNotFound(f"checkpoint {str(path)!r} does not exist") from exc
    except (IsADirectoryError, NotRegularFile) as exc:
        raise ValidationFailed(f"{str(path)!r} is not a regular file, not a single-file checkpoint ({exc})") from exc
    except HeaderError as exc:
        raise ModelLoadFailed(f"{str(path)!r} is not a valid .safetensors file ({exc}): truncated, empty, or not safetensors") from exc
    except OSError as exc:
        raise ModelLoadFailed(f"checkpoint {str(path)!r} could not be read: {exc}") from exc


# --------------------------------------------------------------------------- detection


def config_set_dir(config_set: str) -> Path:
    """The packaged diffusers-style config folder of ``config_set``."""
    if config_set not in CONFIG_SETS:
        raise ValidationFailed(f"unknown config set {config_set!r}; expected one of {', '.join(CONFIG_SETS)}")
    folder = CONFIGS_ROOT / config_set
    if not (folder / "model_index.json").is_file():
        raise ModelLoadFailed(f"packaged config set {config_set!r} is missing at {folder}; reinstall sdworker")
    return folder


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def family_of(config_set: str) -> str:
    """"sd15" or "sdxl": the pipeline family of a packaged config set."""
    return _PIPELINE_FAMILY[_read_json(config_set_dir(config_set) / "model_index.json")["_class_name"]]


@lru_cache(maxsize=1)
def _fingerprints() -> dict[tuple[str, int, int, int], str]:
    """(family, UNet base width, cross-attention dim, CLIP vocab size) -> config set."""
    table: dict[tuple[str, int, int, int], str] = {}
    for name in CONFIG_SETS:
        folder = config_set_dir(name)
        unet = _read_json(folder / "unet" / "config.json")
        vocab = int(_read_json(folder / "text_encoder" / "config.json")["vocab_size"])
        table[(family_of(name), int(unet["block_out_channels"][0]), int(unet["cross_attention_dim"]), vocab)] = name
    return table


def _has_prefix(keys: Any, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _not_a_pipeline(keys: list[str]) -> WorkerError:
    """The most helpful error for a file with no original-layout UNet."""
    if any(k in keys for k in _VAE_CONV_IN):
        return ModelLoadFailed("this file is a standalone VAE, not a full checkpoint; load it as a VAE")
    if any("lora_" in k or ".lora." in k for k in keys):
        return ModelLoadFailed("this file is a LoRA, not a full checkpoint; apply it to a loaded model")
    if any(k.startswith(("double_blocks.", "joint_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        return Unsupported("Flux / SD3 checkpoints are not supported; only SD 1.5 and SDXL")
    if any(k.startswith(("down_blocks.", "unet.", "conv_in.")) for k in keys):
        return ModelLoadFailed(
            "this file uses the diffusers key layout; single-file loading expects the original "
            "(civitai-style) layout. Use a diffusers model folder instead"
        )
    return ModelLoadFailed("not an SD 1.5 / SDXL checkpoint: no 'model.diffusion_model.*' UNet weights found")


def _family(keys: list[str]) -> str:
    if _has_prefix(keys, _OPEN_CLIP_XL):
        if not _has_prefix(keys, _CLIP_L_XL):
            raise ModelLoadFailed("SDXL checkpoint without its CLIP-L text encoder (conditioner.embedders.0)")
        return "sdxl"
    if _has_prefix(keys, "conditioner.embedders.0.model."):
        raise Unsupported("SDXL refiner checkpoints are not supported yet; only SDXL base and SD 1.5")
    if _has_prefix(keys, "cond_stage_model.model."):
        raise Unsupported("SD 2.x checkpoints (OpenCLIP-H text encoder) are not supported yet; only SD 1.5 and SDXL")
    if _has_prefix(keys, _CLIP_L_SD15):
        return "sd15"
    raise ModelLoadFailed("checkpoint has a UNet but no known text encoder weights (cond_stage_model / conditioner)")


def pick_config_set(shapes: dict[str, tuple[int, ...]]) -> str:
    """Which packaged config set fits a checkpoint: "sd15" | "sdxl" | "tiny-sd15" | "tiny-sdxl".

    The family comes from the text-encoder keys (SGM's ``conditioner.embedders`` ->
    SDXL, LDM's ``cond_stage_model.transformer`` -> SD 1.x); the size from the UNet's
    base width (conv_in output channels) and cross-attention context dim.
    """
    keys = sorted(shapes)
    if _CONV_IN not in shapes:
        raise _not_a_pipeline(keys)
    if _has_prefix(keys, _UNET + "joint_blocks.") or _has_prefix(keys, _UNET + "double_blocks."):
        raise Unsupported("Flux / SD3 checkpoints are not supported; only SD 1.5 and SDXL")
    family = _family(keys)
    conv_in = shapes[_CONV_IN]
    if len(conv_in) != 4:
        raise ModelLoadFailed(f"unexpected UNet conv_in shape {list(conv_in)}")
    width, in_channels = conv_in[0], conv_in[1]
    if in_channels != 4:
        kind = {9: "inpainting", 8: "instruct-pix2pix"}.get(in_channels, f"{in_channels}-channel")
        raise Unsupported(f"{kind} checkpoints are not supported yet (UNet takes {in_channels} channels, not 4)")
    ctx_key = next((k for k in keys if _ATTN2_TO_K.match(k)), None)
    if ctx_key is None:
        raise ModelLoadFailed("checkpoint UNet has no cross-attention (attn2) weights")
    context = shapes[ctx_key][-1]
    if family == "sd15" and context == 1024:
        raise Unsupported("SD 2.x checkpoints are not supported yet; only SD 1.5 and SDXL")
    # real checkpoints all use CLIP's vocabulary; the tiny test sets come with and without it
    vocab = next((shapes[k][0] for k in keys if _TOKEN_EMBEDDING.match(k) and shapes[k]), CLIP_VOCAB_SIZE)
    found = _fingerprints().get((family, width, context, vocab))
    if found is None:
        known = ", ".join(
            f"{n} (width {w}, context {c}, vocab {v})" for (f, w, c, v), n in _fingerprints().items() if f == family
        )
        raise ModelLoadFailed(
            f"unknown {family} variant: UNet width {width}, cross-attention context {context}, "
            f"text vocabulary {vocab}; known: {known}"
        )
    return found


# --------------------------------------------------------------------------- tokenizers

_ENCODER_OF = {"tokenizer": "text_encoder", "tokenizer_2": "text_encoder_2"}


def load_tokenizer(
    config_set: str, name: str, checkpoint: Path, tokenizers_dir: str | Path | None = None
) -> Any:
    """The CLIP tokenizer ``name`` ("tokenizer" / "tokenizer_2") for ``config_set``, offline.

    A set with its own tokenizer folder (the tiny ones) uses that alone. The others look in
    ``<checkpoint dir>/<name>``, ``<tokenizers_dir>/<name>``, the local HF cache, and then
    build it from the packaged CLIP vocabulary, so it is always found (clip_tokenizers).
    """
    cfg = config_set_dir(config_set)
    vocab = int(_read_json(cfg / _ENCODER_OF[name] / "config.json")["vocab_size"])
    own = cfg / name if (cfg / name).is_dir() else None
    return find_tokenizer(family_of(config_set), name, vocab, own, checkpoint, tokenizers_dir)


# --------------------------------------------------------------------------- loading


def _checked_file(path: str | Path) -> Path:
    """A .safetensors file, or a pickle the caller was allowed to load (--allow-pickle)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors" and not is_pickle(path):
        raise ValidationFailed(
            f"{str(path)!r}: single files are .safetensors (or .ckpt/.pt/.pth/.bin with --allow-pickle)"
        )
    if not path.is_file():
        raise ModelNotFound(f"checkpoint {str(path)!r} does not exist")
    return path


def check_complete(components: dict[str, Any]) -> None:
    """diffusers leaves weights missing from a checkpoint on the meta device: refuse that."""
    import torch

    for name, module in components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        missing = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
        if missing:
            raise ModelLoadFailed(
                f"checkpoint lacks {len(missing)} weights of the {name} (e.g. {', '.join(missing[:3])}); "
                "is it a complete checkpoint of this architecture?"
            )


def _load_open_clip(checkpoint: Path, cfg: Path, torch_dtype: Any) -> Any:
    """SDXL's OpenCLIP-G text encoder, converted from the checkpoint and loaded strictly.

    diffusers tells CLIP-L from OpenCLIP by comparing hidden sizes (768 vs 1280); when
    they are equal (the tiny model) it would load CLIP-L weights into text_encoder_2.
    Loading it here removes that guess and lets us use strict=True.
    """
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig.from_pretrained(str(cfg / "text_encoder_2"), local_files_only=True)
    with init_empty_weights():
        model = CLIPTextModelWithProjection(config)
    if is_pickle(checkpoint):
        original = {k: v for k, v in pickle_state(checkpoint).items() if k.startswith(_OPEN_CLIP_XL)}
    else:
        with safe_open(str(checkpoint), framework="pt") as fh:
            original = {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(_OPEN_CLIP_XL)}
    state = convert_open_clip_checkpoint(model, original, prefix=_OPEN_CLIP_XL)
    del original
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(torch_dtype).eval()


def load_single_file_pipeline(
    path: str | Path,
    torch_dtype: Any = None,
    config_set: str | None = None,
    tokenizers_dir: str | Path | None = None,
) -> Any:
    """A StableDiffusionPipeline / StableDiffusionXLPipeline from one original-layout file.

    ``config_set`` overrides detection (see :func:`pick_config_set`). Never touches the
    network: configs are packaged, every load is ``local_files_only``.
    """
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    checkpoint = _checked_file(path)
    name = config_set or pick_config_set(checkpoint_shapes(checkpoint))
    cfg = config_set_dir(name)
    family = family_of(name)
    dtype = torch_dtype if torch_dtype is not None else torch.float32
    kwargs: dict[str, Any] = {"tokenizer": load_tokenizer(name, "tokenizer", checkpoint, tokenizers_dir)}
    try:
        if family == "sdxl":
            kwargs["tokenizer_2"] = load_tokenizer(name, "tokenizer_2", checkpoint, tokenizers_dir)
            kwargs["text_encoder_2"] = _load_open_clip(checkpoint, cfg, dtype)
            pipeline_class: Any = StableDiffusionXLPipeline
        else:
            kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            pipeline_class = StableDiffusionPipeline
        pipe = pipeline_class.from_single_file(
            str(checkpoint), config=str(cfg), local_files_only=True, torch_dtype=dtype, **kwargs
        )
    except WorkerError:
        raise
    except Exception as exc:
        raise ModelLoadFailed(
            f"single-file checkpoint {checkpoint.name!r} could not be loaded as {name}: {type(exc).__name__}: {exc}"
        ) from exc
    check_complete(pipe.components)
    return pipe


def load_single_file_vae(path: str | Path, torch_dtype: Any, config_set: str) -> Any:
    """An AutoencoderKL from a standalone original-layout VAE file (or a full checkpoint).

    A VAE file alone cannot tell SD 1.5 from SDXL (same shapes, different scaling
    factor), so the caller names the config set; the width is still checked.
    """
    import torch
    from diffusers import AutoencoderKL

    checkpoint = _checked_file(path)
    cfg = config_set_dir(config_set)
    shapes = checkpoint_shapes(checkpoint)
    conv_in = next((shapes[k] for k in _VAE_CONV_IN if k in shapes), None)
    if conv_in is None:
        raise ModelLoadFailed(f"{checkpoint.name!r} holds no VAE (no encoder.conv_in weight)")
    width = int(_read_json(cfg / "vae" / "config.json")["block_out_channels"][0])
    if conv_in[0] != width:
        raise ModelLoadFailed(f"VAE width {conv_in[0]} does not fit config set {config_set!r} (width {width})")
    try:
        vae = AutoencoderKL.from_single_file(
            str(checkpoint),
            config=str(cfg),
            subfolder="vae",
            local_files_only=True,
            torch_dtype=torch_dtype if torch_dtype is not None else torch.float32,
        )
    except Exception as exc:
        raise ModelLoadFailed(f"VAE {checkpoint.name!r} could not be loaded: {type(exc).__name__}: {exc}") from exc
    check_complete({"vae": vae})
    return vae
