"""A Flux / HiDream / Wan / SD3 transformer in one file (.safetensors or .gguf), run with a diffusers folder.

These models are shared as the transformer alone (FLUX.1's 23 GB `flux1-dev.safetensors`,
city96's `flux1-dev-Q4_K_S.gguf`, ComfyUI's `wan2.1_t2v_1.3B_fp16.safetensors`): the text
encoders, tokenizers, VAE and scheduler are the same for every fine-tune of a base model, so
people keep one copy. A file like that runs with the other components of a diffusers folder of
the same base model in the models dirs, its *companion*: the transformer's config comes from
the companion's `transformer/` folder (so nothing is downloaded) and its weights from the file,
through diffusers' `from_single_file`, which converts BFL / ComfyUI key layouts and, for GGUF,
keeps the weights quantized (dequantized layer by layer as they compute).

Wan 2.2 A14B is shared as two files, its high-noise and low-noise experts
(`wan2.2_t2v_high_noise_14B_fp16.safetensors` + `..._low_noise_...`, or `...-HighNoise-Q4_K_S.gguf` +
`...-LowNoise-...`): naming either runs the pair, the high-noise file as `transformer` and its
sibling as `transformer_2`, with a two-expert Wan 2.2 folder as the companion.

The companion is chosen, not configured: a diffusers folder of the file's base model whose
transformer takes the same input width (Flux Fill vs base, Wan T2V vs I2V) and, for Flux, has
the same guidance embedder; a Krea file also runs with a dev folder. Ties go to the first id in
sorted order, and the result's `parameters.components_from` names the folder used.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import ModelLoadFailed, ModelNotFound, ValidationFailed

if TYPE_CHECKING:
    from .catalog import CatalogItem
    from ..models.refs import ModelRef

FORMATS = ("safetensors", "gguf")


def companion_bases() -> dict[str, tuple[str, ...]]:
    """base_model -> the base models whose folders may lend it their other components, best first
    (each family's Family.companion_bases)."""
    from ..families.registry import companion_bases as of_families

    return of_families()


_EXPERT = re.compile(r"(high|low)[\s_-]?noise", re.IGNORECASE)


def expert_pair(path: Path) -> tuple[Path, Path] | None:
    """(high-noise file, low-noise file) when `path` names one expert of a Wan 2.2 A14B pair, else None.

    The sibling is the file in the same folder whose name differs only in high <-> low; a missing
    sibling is a validation_error (one expert alone cannot denoise the whole schedule)."""
    m = _EXPERT.search(path.name)
    if m is None:
        return None
    word = m.group(1)
    other = {"high": "low", "low": "high"}[word.lower()]
    other = other.upper() if word.isupper() else other.capitalize() if word[0].isupper() else other
    sibling = path.with_name(path.name[: m.start(1)] + other + path.name[m.end(1):])
    if not sibling.is_file():
        raise ValidationFailed(
            f"{path.name!r} is the {word.lower()}-noise expert of a Wan 2.2 A14B pair, and its {other.lower()}-noise twin "
            f"{sibling.name!r} is not next to it; put both files in the same folder",
            [{"path": "model_id", "message": f"missing {sibling.name}"}],
        )
    return (path, sibling) if word.lower() == "high" else (sibling, path)


def runs_alone(item: "CatalogItem") -> bool:
    """Whether `item` is a transformer file this module can run (given a companion folder)."""
    return item.format in FORMATS and item.kind in ("unet", "checkpoint") and item.base_model in companion_bases()


def _transformer_config(folder: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((folder / "transformer" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _two_experts(folder: Path) -> bool:
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(index.get("transformer_2"), list) and None not in index["transformer_2"]


def fits(item: "CatalogItem", folder: "ModelRef", pair: bool = False) -> str | None:
    """Why `folder` cannot lend its components to `item` (None: it can); `pair`: the file is one of two experts."""
    cfg = _transformer_config(folder.path)
    if not cfg:
        return "it has no readable transformer/config.json"
    inputs = item.details.get("in_channels")
    if isinstance(inputs, int) and cfg.get("in_channels") not in (None, inputs):
        return f"its transformer takes {cfg.get('in_channels')} input channels, the file's {inputs}"
    guidance = item.details.get("guidance_embed")
    if isinstance(guidance, bool) and bool(cfg.get("guidance_embeds", False)) != guidance and item.base_model.startswith("flux"):
        return "its transformer " + ("lacks" if guidance else "has") + " the guidance embedder the file " + ("has" if guidance else "lacks")
    if _two_experts(folder.path) and not pair:
        return "it has two transformer experts (Wan 2.2 A14B); a single file replaces only one"
    if pair and not _two_experts(folder.path):
        return "it has one transformer; a high-noise + low-noise pair needs a two-expert Wan 2.2 A14B folder"
    return None


def companion(item: "CatalogItem", folders: Iterable["ModelRef"], field: str = "model_id", pair: bool = False) -> "ModelRef":
    """The diffusers folder that lends `item` its text encoders, tokenizers, VAE and scheduler."""
    wanted = companion_bases()[item.base_model]
    candidates = sorted((f for f in folders if f.base_model in wanted), key=lambda f: (wanted.index(f.base_model), f.model_id))
    refused: list[str] = []
    for folder in candidates:
        why = fits(item, folder, pair)
        if why is None:
            return folder
        refused.append(f"{folder.model_id} ({why})")
    what = f"{item.model_id!r} is a {item.base_model} transformer in one {item.format} file"
    need = f"a diffusers folder of {item.base_model} in the models dirs (its text encoders, tokenizers, VAE and scheduler run with the file)"
    if refused:
        raise ValidationFailed(f"{what}; it needs {need}, and none fits: {'; '.join(refused)}", [{"path": field, "message": "no fitting companion folder"}])
    raise ModelNotFound(f"{what}; it needs {need}, and there is none", [{"path": field, "message": "no companion folder"}])


def load(cls: type, path: Path, folder: Path, torch_dtype: Any, extra: dict[str, Any], component: str = "transformer") -> Any:
    """`cls` (the companion's `component` class) with the file's weights and the companion's config.

    GGUF weights stay quantized (GGUFQuantizationConfig, computing in `torch_dtype`); `extra` are
    the weight format's from_pretrained arguments (managers.weights.load_kwargs).
    """
    from .single_file import check_complete

    kwargs: dict[str, Any] = {"config": str(folder), "subfolder": component, "local_files_only": True, "torch_dtype": torch_dtype, **extra}
    if path.suffix.lower() == ".gguf":
        from diffusers import GGUFQuantizationConfig

        kwargs["quantization_config"] = GGUFQuantizationConfig(compute_dtype=torch_dtype)
    if not hasattr(cls, "from_single_file"):
        raise ModelLoadFailed(f"{cls.__name__} cannot be loaded from one file by this diffusers version")
    try:
        model = cls.from_single_file(str(path), **kwargs)
    except Exception as exc:  # noqa: BLE001  (shape mismatches, truncated files, missing gguf, ...)
        raise ModelLoadFailed(
            f"transformer file {path.name!r} could not be loaded with the config of {folder.name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    check_complete({component: model})
    return model
