"""Generation modes: the diffusers pipeline family that runs each, its inputs, and its call arguments.

A mode is a row here, not a fork of the run path: text2img, img2img and inpainting share one
loaded model (diffusers' `from_pipe` reuses the components) and differ only in these arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import limits
from ..errors import ValidationFailed
from .images_in import decode_probed, probe_image

MODES = ("text2img", "img2img", "inpainting")

_AUTO = {
    "text2img": "AutoPipelineForText2Image",
    "img2img": "AutoPipelineForImage2Image",
    "inpainting": "AutoPipelineForInpainting",
}


@dataclass
class ModeInputs:
    init_image: Any = None  # PIL RGB, already at the output size
    mask_image: Any = None  # PIL L, same size (white = repaint)


def auto_pipeline(mode: str) -> Any:
    import diffusers

    return getattr(diffusers, _AUTO[mode])


def with_components(pipe: Any, mode: str, **components: Any) -> Any:
    """A pipeline of `mode` for one run: `pipe`'s components, except these (e.g. another VAE).

    The auto pipelines' from_pipe keeps every component's dtype (DiffusionPipeline.from_pipe
    would cast them all to fp32) and leaves `pipe`, the cached pipeline, as it was.
    """
    new = auto_pipeline(mode).from_pipe(pipe, **components)
    new.set_progress_bar_config(disable=True)
    return new


def is_mode(pipe: Any, mode: str) -> bool:
    name = type(pipe).__name__
    if mode == "img2img":
        return "Img2Img" in name
    if mode == "inpainting":
        return "Inpaint" in name
    return "Img2Img" not in name and "Inpaint" not in name


def _fit(side: int) -> int:
    return max(64, side - side % 8)


def check_derived_size(w: int, h: int, width: int | None, height: int | None) -> None:
    """A side taken from the init image obeys --max-resolution like a requested one (a sent width or
    height was checked with the request)."""
    limit = limits.current().max_resolution
    over = [(f, v) for f, v, sent in (("width", w, width), ("height", h, height)) if sent is None and v > limit]
    if over:
        said = " and ".join(f"{f} {v}" for f, v in over)
        msg = f"the output {said} taken from the init image is over the limit of {limit} (--max-resolution); send width and height, or a smaller image"
        raise ValidationFailed(f"init_image: {msg}", [{"path": "init_image", "message": msg}])


def prepare(
    mode: str,
    init_image: str | None,
    mask_image: str | None,
    width: int | None,
    height: int | None,
    roots: list[Path],
) -> tuple[ModeInputs, int | None, int | None]:
    """Decode and size the input images; returns them with the output width and height.

    img2img/inpainting output the requested size, or the init image's size rounded down to a
    multiple of 8; the init image (and mask) are resized to it.
    """
    if mode == "text2img":
        return ModeInputs(), width, height
    problems: list[dict[str, str]] = []
    if not init_image:
        problems.append({"path": "init_image", "message": f"{mode} needs an init_image"})
    if mode == "inpainting" and not mask_image:
        problems.append({"path": "mask_image", "message": "inpainting needs a mask_image"})
    if problems:
        raise ValidationFailed(f"{problems[0]['path']}: {problems[0]['message']}", problems)
    assert init_image is not None
    init_probe = probe_image(init_image, "init_image", roots)  # headers only: sizes are checked before pixels
    mask_probe = probe_image(mask_image, "mask_image", roots) if mode == "inpainting" and mask_image else None
    if mask_probe is not None and mask_probe.size != init_probe.size:
        (mw, mh), (iw, ih) = mask_probe.size, init_probe.size
        msg = f"mask is {mw}x{mh} but init_image is {iw}x{ih}; they must match"
        raise ValidationFailed(f"mask_image: {msg}", [{"path": "mask_image", "message": msg}])
    w = width or _fit(init_probe.width)
    h = height or _fit(init_probe.height)
    check_derived_size(w, h, width, height)
    init = decode_probed(init_probe, "RGB")
    mask = decode_probed(mask_probe, "L") if mask_probe is not None else None
    if init.size != (w, h):
        from PIL import Image

        init = init.resize((w, h), Image.Resampling.LANCZOS)
        if mask is not None:
            mask = mask.resize((w, h), Image.Resampling.NEAREST)
    return ModeInputs(init, mask), w, h


def call_kwargs(mode: str, inputs: ModeInputs, width: int, height: int, strength: float) -> dict[str, Any]:
    """The mode-specific arguments of the pipeline call (the shared ones are the caller's)."""
    if mode == "text2img":
        return {"width": width, "height": height}
    if mode == "img2img":
        return {"image": inputs.init_image, "strength": strength}
    return {"image": inputs.init_image, "mask_image": inputs.mask_image, "strength": strength, "width": width, "height": height}


# How an img2img/inpainting pipeline turns steps and strength into denoising steps (diffusers'
# get_timesteps): a family that truncates (Family.truncates_strength: SD's pipelines, ControlNet ones
# too) runs min(int(steps * strength), steps), which is 0 when steps * strength < 1 and the call then
# fails; the others steps - int(steps * (1 - strength)), at least 1 for any strength > 0.


def denoising_steps(steps: int, strength: float, family: str = "sd") -> int:
    """Denoising steps the first pass of an img2img/inpainting call runs (as the family's pipelines count)."""
    from ..families import registry

    if registry.truncates_strength(family):
        return min(int(steps * strength), steps)
    return steps - int(max(steps - steps * strength, 0))


def strength_problems(mode: str, steps: int, strength: float, family: str = "sd") -> list[dict[str, str]]:
    """A request whose steps and strength leave no denoising step is refused before it is queued.

    diffusers would fail inside the call (after queueing and loading); running one step anyway would
    be a denoise the host did not ask for. The message names the nearest settings that work.
    """
    if mode == "text2img" or denoising_steps(steps, strength, family) >= 1:
        return []
    need_steps = max(steps + 1, math.ceil(1 / strength))
    while denoising_steps(need_steps, strength, family) < 1:
        need_steps += 1
    need_strength = min(1.0, math.ceil(1000 / steps) / 1000)
    while need_strength < 1.0 and denoising_steps(steps, need_strength, family) < 1:
        need_strength = min(1.0, need_strength + 0.001)
    message = (
        f"steps {steps} with strength {strength:g} leaves no denoising step ({mode} denoises int(steps x strength) "
        f"steps, as diffusers counts them); use steps >= {need_steps} or strength >= {need_strength:g}"
    )
    return [{"path": "strength", "message": message}]
