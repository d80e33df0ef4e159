"""A1111's hires fix: a text2img pass, an upscale, then an img2img pass at the larger size.

- Sizes: the final size is `hires.width` x `hires.height` when given (one of them: the other
  keeps the aspect ratio), else the first pass's size times `scale`; rounded down to a
  multiple of 8.
- Upscalers: "latent" resizes the first pass's latents with `torch.nn.functional.interpolate`
  (bilinear, no antialias: A1111's "Latent"; "latent_nearest_exact" and "latent_bicubic" are
  its other latent modes) and hands them to the img2img pass as latents; "lanczos" decodes the
  first pass, resizes the images with PIL's LANCZOS and lets the img2img pass encode them.
- Second pass: the img2img pipeline over the same components at strength `hires.denoise`, with
  fresh CPU generators seeded seed + i (the same seeds as the first pass, as A1111 does).
- Steps: `hires.steps` (default: the request's) is the number of second-pass steps that run,
  whatever the denoise, as in A1111 (which asks its sampler for steps / denoise and runs the last
  `steps` of them). diffusers' img2img runs int(num_inference_steps x strength) of the
  num_inference_steps it is given, so the pass is called with the smallest num_inference_steps
  for which that is exactly `hires.steps` (`scheduler_steps`): never zero steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import ValidationFailed

MAX_SCHEDULER_STEPS = 1000  # SD / SDXL schedulers' training timesteps: a longer schedule is refused by some

# upscaler -> (A1111's name, torch interpolate mode or None for a pixel-space resize)
UPSCALERS: dict[str, tuple[str, str | None]] = {
    "latent": ("Latent", "bilinear"),
    "latent_nearest_exact": ("Latent (nearest-exact)", "nearest-exact"),
    "latent_bicubic": ("Latent (bicubic)", "bicubic"),
    "lanczos": ("Lanczos", None),
}


@dataclass(frozen=True)
class HiresPlan:
    width: int  # final size
    height: int
    steps: int
    denoise: float
    upscaler: str
    scale: float
    resize: bool  # the request gave the final width/height itself

    @property
    def scheduler_steps(self) -> int:
        """num_inference_steps for the img2img call: `steps` of them run at strength `denoise`."""
        return scheduler_steps(self.steps, self.denoise)

    @property
    def latent_mode(self) -> str | None:
        return UPSCALERS[self.upscaler][1]

    def describe(self) -> dict[str, Any]:
        """The result's `parameters.hires` (the infotext reads it too)."""
        return {
            "scale": self.scale,
            "upscaler": self.upscaler,
            "upscaler_name": UPSCALERS[self.upscaler][0],
            "steps": self.steps,
            "scheduler_steps": self.scheduler_steps,
            "denoise": self.denoise,
            "width": self.width,
            "height": self.height,
            "resize": f"{self.width}x{self.height}" if self.resize else None,
        }


def steps_run(scheduler_steps: int, strength: float) -> int:
    """The steps diffusers' img2img pipelines run (get_timesteps: int(n x strength), at most n)."""
    return min(int(scheduler_steps * strength), scheduler_steps)


def scheduler_steps(steps: int, denoise: float) -> int:
    """The smallest n for which diffusers' img2img runs exactly `steps` steps at strength `denoise`.

    steps_run(n) grows by 0 or 1 as n grows, so it passes through every count: start near
    steps / denoise and step to the first n that gives `steps` (the float product decides).
    """
    if steps < 1 or not 0.0 < denoise <= 1.0:
        raise ValueError(f"hires steps {steps} at denoise {denoise}: steps must be >= 1 and denoise in (0, 1]")
    n = max(steps, math.ceil(steps / denoise))
    while steps_run(n, denoise) < steps:
        n += 1
    while n > steps and steps_run(n - 1, denoise) >= steps:
        n -= 1
    return n


def _down8(v: float) -> int:
    return max(64, int(v) - int(v) % 8)


def plan(opts: Any, width: int, height: int, steps: int) -> HiresPlan:
    """The second pass's size and settings for a first pass of width x height."""
    if opts.width or opts.height:
        w = opts.width or round(opts.height * width / height)
        h = opts.height or round(opts.width * height / width)
        return HiresPlan(_down8(w), _down8(h), opts.steps or steps, opts.denoise, opts.upscaler, round(w / width, 4), True)
    return HiresPlan(_down8(width * opts.scale), _down8(height * opts.scale), opts.steps or steps, opts.denoise, opts.upscaler, opts.scale, False)


def checked_plan(req: Any, mode: str, width: int, height: int, max_resolution: int, max_steps: int) -> HiresPlan | None:
    """The request's hires plan (None without `hires`), checked at plan time, so that
    inference.validate_request and the job agree: every refusal is a validation_error here."""
    if req.hires is None:
        return None
    if mode != "text2img":
        raise _invalid("hires", f"hires fix is for text2img, not {mode}")
    if req.refiner is not None:
        raise _invalid("hires", "hires fix and a refiner cannot be combined in one request")
    hp = plan(req.hires, width, height, req.steps)
    problems = []
    if max(hp.width, hp.height) > max_resolution:
        where = "hires.width" if req.hires.width or req.hires.height else "hires.scale"
        problems.append({"path": where, "message": f"the hires size {hp.width}x{hp.height} is over the limit of {max_resolution}"})
    if hp.steps > max_steps:
        problems.append({"path": "hires.steps", "message": f"{hp.steps} is over the limit of {max_steps}"})
    elif hp.scheduler_steps > MAX_SCHEDULER_STEPS:
        problems.append({
            "path": "hires.denoise",
            "message": f"{hp.steps} hires steps at denoise {hp.denoise:g} need a {hp.scheduler_steps}-step schedule, over "
            f"{MAX_SCHEDULER_STEPS}; raise denoise or lower hires.steps",
        })
    if problems:
        raise ValidationFailed(f"{problems[0]['path']}: {problems[0]['message']}", problems)
    return hp


def _invalid(path: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{path}: {message}", [{"path": path, "message": message}])


def upscale_latents(torch: Any, latents: Any, hp: HiresPlan, vae_scale_factor: int) -> Any:
    size = (hp.height // vae_scale_factor, hp.width // vae_scale_factor)
    assert hp.latent_mode is not None
    return torch.nn.functional.interpolate(latents, size=size, mode=hp.latent_mode)


def upscale_images(images: list[Any], hp: HiresPlan) -> list[Any]:
    from PIL import Image

    return [im.resize((hp.width, hp.height), Image.Resampling.LANCZOS) for im in images]
