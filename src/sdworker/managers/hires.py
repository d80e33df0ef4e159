"""A1111's hires fix: a text2img pass, an upscale, then an img2img pass at the larger size.

- Sizes: the final size is `hires.width` x `hires.height` when given (one of them: the other
  keeps the aspect ratio), else the first pass's size times `scale`; rounded down to a
  multiple of 8.
- Upscalers: "latent" resizes the first pass's latents with `torch.nn.functional.interpolate`
  (bilinear, no antialias: A1111's "Latent"; "latent_nearest_exact" and "latent_bicubic" are
  its other latent modes) and hands them to the img2img pass as latents; "lanczos" decodes the
  first pass, resizes the images with PIL's LANCZOS and lets the img2img pass encode them.
- Second pass: the img2img pipeline over the same components, `hires.steps` steps (default: the
  request's) at strength `hires.denoise`, with fresh CPU generators seeded seed + i (the same
  seeds as the first pass, as A1111 does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    def latent_mode(self) -> str | None:
        return UPSCALERS[self.upscaler][1]

    def describe(self) -> dict[str, Any]:
        """The result's `parameters.hires` (the infotext reads it too)."""
        return {
            "scale": self.scale,
            "upscaler": self.upscaler,
            "upscaler_name": UPSCALERS[self.upscaler][0],
            "steps": self.steps,
            "denoise": self.denoise,
            "width": self.width,
            "height": self.height,
            "resize": f"{self.width}x{self.height}" if self.resize else None,
        }


def _down8(v: float) -> int:
    return max(64, int(v) - int(v) % 8)


def plan(opts: Any, width: int, height: int, steps: int) -> HiresPlan:
    """The second pass's size and settings for a first pass of width x height."""
    if opts.width or opts.height:
        w = opts.width or round(opts.height * width / height)
        h = opts.height or round(opts.width * height / width)
        return HiresPlan(_down8(w), _down8(h), opts.steps or steps, opts.denoise, opts.upscaler, round(w / width, 4), True)
    return HiresPlan(_down8(width * opts.scale), _down8(height * opts.scale), opts.steps or steps, opts.denoise, opts.upscaler, opts.scale, False)


def upscale_latents(torch: Any, latents: Any, hp: HiresPlan, vae_scale_factor: int) -> Any:
    size = (hp.height // vae_scale_factor, hp.width // vae_scale_factor)
    assert hp.latent_mode is not None
    return torch.nn.functional.interpolate(latents, size=size, mode=hp.latent_mode)


def upscale_images(images: list[Any], hp: HiresPlan) -> list[Any]:
    from PIL import Image

    return [im.resize((hp.width, hp.height), Image.Resampling.LANCZOS) for im in images]
