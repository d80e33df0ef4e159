"""ControlNets: check a request's list (plan_controlnets), load them (ControlNetManager), run them.

A request's `controlnets` is a list of {model, image, conditioning_scale, preprocessor, start,
end}. Everything that can be checked before queueing is checked in `plan_controlnets`: the
model is a ControlNet of the models dirs made for the model's architecture, the numbers are in
range, the image decodes; it is resized to the output size (A1111's "Just Resize") and run
through its preprocessor there, so the job only loads and denoises.

Running: the ControlNet pipeline of the mode is built over the loaded model's components
(`AutoPipelineFor*.from_pipe(pipe, controlnet=...)`: no reload, no copy, and unlike
`DiffusionPipeline.from_pipe` it leaves every shared component's dtype as it is), with one
`ControlNetModel` or, for several, a `MultiControlNetModel`. Flux models take
`FluxControlNetModel`s (diffusers folders) the same way, several in a `FluxMultiControlNetModel`;
their fit is checked against the transformer's config instead of the UNet's. Which base models
share ControlNets, which pipeline runs them and which config fields must match is each family's
(Family.controlnet_*). Loading (ControlNetManager, single files) is managers.controlnet_files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..errors import ModelNotFound, Unsupported, ValidationFailed, WorkerError
from . import modes, preprocessors
from .controlnet_files import _LDM_PREFIX, ControlNetManager
from .images_in import decode_image

if TYPE_CHECKING:
    from .catalog import CatalogItem, ModelCatalog


FIELD = "controlnets"
MAX_SCALE = 2.0


def _groups() -> dict[str, str]:
    """base model -> the ControlNet group it shares ControlNets with (Family.controlnet_groups)."""
    from ..families import registry

    return registry.controlnet_groups()


def _listed(conjunction: str) -> str:
    names = list(dict.fromkeys(_groups().values()))
    return f"{', '.join(names[:-1])} {conjunction} {names[-1]}"


@dataclass
class ControlSpec:
    """One checked ControlNet of a request, its control image ready for the pipeline."""

    index: int
    model_id: str
    path: Path
    format: str  # diffusers | safetensors | ckpt
    base_model: str  # the ControlNet's own; "unknown" when neither catalog nor config says
    image: Any  # PIL RGB, width x height, preprocessed
    conditioning_scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    preprocessor: str = "none"

    def describe(self) -> dict[str, Any]:
        """For the result's `parameters` (the image is left out)."""
        return {
            "model": self.model_id,
            "conditioning_scale": self.conditioning_scale,
            "start": self.start,
            "end": self.end,
            "preprocessor": self.preprocessor,
        }


def _get(spec: Any, name: str, default: Any = None) -> Any:
    if isinstance(spec, Mapping):
        return spec.get(name, default)
    return getattr(spec, name, default)


def _number(value: Any, default: float) -> float | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


# ---- planning -------------------------------------------------------------------------------------


def controlnet_base(item: "CatalogItem") -> str:
    """The base model a ControlNet was made for: the catalog's word, else its config or tensor names.

    "sd" means SD 1.x or 2.x (not SDXL) where the width of its text context cannot say which.
    """
    if item.base_model != "unknown":
        return item.base_model
    try:
        if item.path.is_dir():
            return family_of_config(json.loads((item.path / "config.json").read_text(encoding="utf-8")))
        if item.path.suffix.lower() == ".safetensors":
            from .single_file import checkpoint_shapes

            from ..families import registry

            return registry.controlnet_file_base([k.removeprefix(_LDM_PREFIX) for k in checkpoint_shapes(item.path)])
    except (OSError, ValueError, WorkerError):
        pass
    return "unknown"


def family_of_config(cfg: Mapping[str, Any]) -> str:
    """The base model of a ControlNet (or denoiser) config.json, as the family of its class reads it
    (Family.controlnet_config_base: flux, sdxl, sd_1_5 / sd_2, or "sd" for SD 1.x or 2.x)."""
    from ..families import registry

    return registry.controlnet_config_base(cfg)


def _find(catalog: "ModelCatalog", name: str, path: str) -> "CatalogItem":
    try:
        return catalog.find(name, "controlnet", path)
    except ModelNotFound as not_found:
        try:
            other = catalog.find(name, None, path)
        except WorkerError:
            raise not_found from None
        raise ValidationFailed(f"{path}: {other.model_id!r} is a {other.kind}, not a ControlNet", [{"path": path, "message": f"a {other.kind}, not a ControlNet"}]) from None


def _fits(cn_base: str, model_base: str) -> str | None:
    """Why a ControlNet of `cn_base` cannot run on a `model_base` model (None: it can, or cannot tell)."""
    groups = _groups()
    model = groups[model_base]
    if cn_base == "unknown":
        return None  # a layout nothing here can read: the load compares it with the UNet
    from ..families import registry

    vague = registry.controlnet_vague_bases().get(cn_base)  # "sd": SD 1.x or 2.x, the width unread
    if vague is not None:
        label, fits = vague
        article = "an" if label.startswith("S") else "a"
        return None if model in fits else f"it is {article} {label} ControlNet and the model is {model} ({model_base})"
    if cn_base not in groups:
        return f"it is a {cn_base} ControlNet; ControlNets here are for {_listed('and')} models"
    if groups[cn_base] != model:
        article = "an" if groups[cn_base].startswith("S") else "a"
        return f"it is {article} {groups[cn_base]} ControlNet and the model is {model} ({model_base})"
    return None


def mismatch(cn_config: Mapping[str, Any], unet_config: Mapping[str, Any]) -> str | None:
    """Why a ControlNet's residuals cannot be added to this UNet's (or Flux transformer's) blocks (None: they can)."""
    from ..families import registry

    family = registry.controlnet_family(denoiser=unet_config)  # its Family.controlnet_shape_keys must match
    for name in family.controlnet_shape_keys:
        mine, theirs = cn_config.get(name), unet_config.get(name)
        if isinstance(mine, (list, tuple)) or isinstance(theirs, (list, tuple)):
            mine, theirs = list(mine or []), list(theirs or [])
        if mine != theirs:
            return f"its {name} is {mine}, the model's {family.denoiser_name} has {theirs}"
    return None


def unet_config(model_path: Path) -> dict[str, Any] | None:
    """The UNet (Flux: transformer) config of a diffusers model folder (None for a single file or an unreadable one)."""
    for denoiser in ("unet", "transformer"):
        try:
            return json.loads((model_path / denoiser / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return None


def plan_controlnets(
    specs: list[Any] | None,
    model_base: str,
    width: int,
    height: int,
    roots: list[Path],
    catalog: "ModelCatalog",
    allow_pickle: bool = False,
    model_unet: Mapping[str, Any] | None = None,
) -> list[ControlSpec]:
    """Check a request's ControlNets and prepare their images; every problem is reported at once.

    `specs` are objects or dicts with model, image, conditioning_scale, preprocessor, start, end.
    `model_unet` (the model's UNet config, when it has one on disk) lets a ControlNet folder be
    compared with it exactly; otherwise the base models are compared, and the load checks again.
    Raises ValidationFailed with paths data.controlnets[i].field (unsafe_path for a pickle file
    without --allow-pickle, model_not_found for an unknown model).
    """
    if not specs:
        return []
    if model_base not in _groups():
        msg = f"ControlNets need an {_listed('or')} model; this one is {model_base}"
        raise ValidationFailed(f"{FIELD}: {msg}", [{"path": FIELD, "message": msg}])
    problems: list[dict[str, str]] = []
    planned: list[ControlSpec] = []
    for i, spec in enumerate(specs):
        at = f"{FIELD}[{i}]"
        found = len(problems)

        def bad(fld: str, message: str) -> None:
            problems.append({"path": f"{at}.{fld}", "message": message})

        nums = _numbers(spec, bad)
        try:
            pre = preprocessors.resolve(_get(spec, "preprocessor"), f"{at}.preprocessor")
        except ValidationFailed as exc:
            problems.extend(exc.details)
            pre = "none"
        found_model = _model(spec, at, bad, catalog, model_base, model_unet, allow_pickle)
        image = None
        source = _get(spec, "image")
        if not isinstance(source, str) or not source.strip():
            bad("image", "required: the control image (base64, or a path inside an allowed root)")
        else:
            try:
                image = decode_image(source, f"{at}.image", roots, "RGB")
            except ValidationFailed as exc:
                problems.extend(exc.details)
        if len(problems) > found or found_model is None or image is None:
            continue
        item, base = found_model
        planned.append(
            ControlSpec(
                i, item.model_id, item.path, item.format, base, control_image(image, pre, width, height),
                nums["conditioning_scale"], nums["start"], nums["end"], pre,
            )
        )
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValidationFailed(f"{problems[0]['path']}: {problems[0]['message']}{more}", problems)
    return planned


def _numbers(spec: Any, bad: Callable[[str, str], None]) -> dict[str, float]:
    """conditioning_scale in [0, 2]; start and end in [0, 1], start < end (defaults 1, 0, 1)."""
    nums: dict[str, float] = {}
    for fld, default in (("conditioning_scale", 1.0), ("start", 0.0), ("end", 1.0)):
        value = _number(_get(spec, fld), default)
        if value is None:
            bad(fld, f"must be a number, not {_get(spec, fld)!r}")
        else:
            nums[fld] = value
    scale = nums.get("conditioning_scale")
    if scale is not None and not 0.0 <= scale <= MAX_SCALE:
        bad("conditioning_scale", f"{scale} is outside [0, {MAX_SCALE:g}]")
    for fld in ("start", "end"):
        if fld in nums and not 0.0 <= nums[fld] <= 1.0:
            bad(fld, f"{nums[fld]} is outside [0, 1] (a fraction of the steps)")
    if "start" in nums and "end" in nums and nums["start"] >= nums["end"]:
        bad("end", f"end ({nums['end']}) must be greater than start ({nums['start']})")
    return nums


def _model(
    spec: Any,
    at: str,
    bad: Callable[[str, str], None],
    catalog: "ModelCatalog",
    model_base: str,
    model_unet: Mapping[str, Any] | None,
    allow_pickle: bool,
) -> "tuple[CatalogItem, str] | None":
    """The ControlNet's catalog item and base model, when it is one and fits the model."""
    name = _get(spec, "model")
    if not isinstance(name, str) or not name.strip():
        bad("model", "required: a ControlNet in the models dirs")
        return None
    item = _find(catalog, name.strip(), f"{at}.model")
    if item.pickle and not allow_pickle:
        from .locator import pickle_refused

        raise pickle_refused(name, f"{at}.model")
    base = controlnet_base(item)
    why = _fits(base, model_base)
    if why is None and not item.path.is_dir():
        from ..families import registry

        why = registry.controlnet_file_refusal(base)  # Flux's load from diffusers folders only
    if why is None and model_unet is not None and item.path.is_dir():
        try:
            why = mismatch(json.loads((item.path / "config.json").read_text(encoding="utf-8")), model_unet)
        except (OSError, ValueError):
            pass  # unreadable: the load says so
    if why:
        bad("model", f"{item.model_id!r} does not fit this model: {why}")
        return None
    return item, base


def control_image(image: Any, preprocessor: str, width: int, height: int) -> Any:
    """The image the pipeline gets: resized to the output size, then preprocessed there."""
    if image.size != (width, height):
        from PIL import Image

        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return preprocessors.apply(preprocessor, image)


def check_against_unet(spec: ControlSpec, net: Any, model_unet: Mapping[str, Any]) -> None:
    """A loaded ControlNet that does not fit the model's UNet: a validation error (for files the plan could not read)."""
    why = mismatch(net.config, model_unet)
    if why:
        path = f"{FIELD}[{spec.index}].model"
        msg = f"{spec.model_id!r} does not fit this model: {why}"
        raise ValidationFailed(f"{path}: {msg}", [{"path": path, "message": msg}])


# ---- running --------------------------------------------------------------------------------------


def pipeline_for(pipe: Any, mode: str, nets: list[Any]) -> Any:
    """The ControlNet pipeline of `mode` over `pipe`'s components, with these ControlNetModels."""
    if not nets:
        raise ValueError("pipeline_for needs at least one ControlNet")
    from ..families import registry

    family = registry.controlnet_family(pipe=pipe)
    want = family.controlnet_pipeline(pipe, mode)
    if want is None:
        raise Unsupported(f"ControlNets work with text2img, img2img and inpainting, not {mode}")
    controlnet = nets[0] if len(nets) == 1 else family.controlnet_multi(nets)
    new = modes.auto_pipeline(mode).from_pipe(pipe, controlnet=controlnet)
    if type(new).__name__ != want:
        raise Unsupported(f"{type(pipe).__name__} has no ControlNet {mode} pipeline (got {type(new).__name__})")
    new.set_progress_bar_config(disable=True)
    return new


def controlnet_call_kwargs(pipeline_class: Any, specs: list[ControlSpec]) -> dict[str, Any]:
    """The ControlNet arguments of the pipeline call: scalars for one ControlNet, lists for several.

    The control image goes to `control_image` where the pipeline has it (img2img and inpainting,
    where `image` is the init image, and every Flux ControlNet pipeline), else to `image`.
    """
    import inspect

    cls = pipeline_class if isinstance(pipeline_class, type) else type(pipeline_class)
    key = "control_image" if "control_image" in inspect.signature(cls.__call__).parameters else "image"
    if len(specs) == 1:
        s = specs[0]
        return {
            key: s.image,
            "controlnet_conditioning_scale": s.conditioning_scale,
            "control_guidance_start": s.start,
            "control_guidance_end": s.end,
        }
    return {
        key: [s.image for s in specs],
        "controlnet_conditioning_scale": [s.conditioning_scale for s in specs],
        "control_guidance_start": [s.start for s in specs],
        "control_guidance_end": [s.end for s in specs],
    }


def infotext_pairs(specs: list[ControlSpec]) -> list[tuple[str, str]]:
    """A1111's infotext entries: ControlNet 0: "Module: canny, Model: ..., Weight: 1, ..."."""
    out = []
    for n, s in enumerate(specs):
        body = f"Module: {s.preprocessor}, Model: {s.model_id}, Weight: {s.conditioning_scale:g}, Guidance Start: {s.start:g}, Guidance End: {s.end:g}"
        out.append((f"ControlNet {n}", f'"{body}"'))
    return out


__all__ = [
    "ControlNetManager", "ControlSpec", "check_against_unet", "control_image", "controlnet_base", "controlnet_call_kwargs",
    "family_of_config", "infotext_pairs", "mismatch", "pipeline_for", "plan_controlnets", "unet_config",
]
