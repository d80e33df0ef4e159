"""Step previews: the latents as a small JPEG, by a linear map from latent channels to RGB.

A VAE decode per preview would cost as much as a denoising step. SD's four latent channels are
close to a linear color code, so a 4x3 matrix (plus a bias) turns a latent pixel into an RGB
value in [-1, 1] well enough to watch an image form; the numbers are the ones ComfyUI fitted
for its "latent2rgb" previews; each family keeps its own (Family.latent_rgb). The preview has
the latents' size (1/8 of the image), downscaled so its longest side is at most 256 px, and costs
a few milliseconds. The latents a step callback sees are still noisy, so early previews are too.

Wiring (see `preview_maker` and `preview_extra`): the step callback adds `{"preview": <base64>}`
to the progress event of every n-th step when the request asked for `preview: true`.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .progress import JobProgress

DEFAULT_EVERY_N_STEPS = 5
MAX_SIDE = 256
QUALITY = 70


def latents_to_rgb(latents: Any, base_model: str) -> Any | None:
    """An HxWx3 uint8 numpy array from the first image of (B, 4, H, W) latents (or (B, 4, F, H, W)).

    None when the latents are not 4-channel (other latent spaces have other maps).
    """
    import torch

    lat = latents
    if lat.ndim == 5:  # video latents: the first frame
        lat = lat[:, :, 0]
    if lat.ndim == 4:
        lat = lat[0]
    from ..families import registry

    mapping = registry.latent_rgb(base_model)
    if lat.ndim != 3 or lat.shape[0] != 4 or mapping is None:
        return None
    factors, bias = mapping
    with torch.no_grad():
        m = torch.tensor(factors, dtype=torch.float32, device=lat.device)
        b = torch.tensor(bias, dtype=torch.float32, device=lat.device)
        rgb = torch.einsum("chw,cr->hwr", lat.detach().float(), m) + b
        rgb = torch.nan_to_num(rgb).add_(1.0).mul_(127.5).clamp_(0, 255).round_()
        return rgb.to(torch.uint8).cpu().numpy()


def preview_jpeg(latents: Any, base_model: str, max_side: int = MAX_SIDE, quality: int = QUALITY) -> str | None:
    """Base64 of a small JPEG of the latents' first image; None for latents it cannot map."""
    from PIL import Image

    rgb = latents_to_rgb(latents, base_model)
    if rgb is None:
        return None
    img = Image.fromarray(rgb, "RGB")
    longest = max(img.size)
    if longest > max_side:
        scale = max_side / longest
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class PreviewMaker:
    """Makes a preview on every n-th step (1-based step numbers: n, 2n, ...), None on the others."""

    def __init__(self, every_n_steps: int = DEFAULT_EVERY_N_STEPS, base_model: str = "sdxl", max_side: int = MAX_SIDE, quality: int = QUALITY):
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be at least 1")
        self.every_n_steps = every_n_steps
        self.base_model = base_model
        self.max_side = max_side
        self.quality = quality
        self.made = 0

    def maybe(self, step: int, latents: Any) -> str | None:
        if latents is None or step < 1 or step % self.every_n_steps:
            return None
        out = preview_jpeg(latents, self.base_model, self.max_side, self.quality)
        if out is not None:
            self.made += 1
        return out


def preview_maker(ctx: "JobProgress", base_model: str, every_n_steps: int = DEFAULT_EVERY_N_STEPS) -> PreviewMaker | None:
    """A PreviewMaker when the job's request asked for previews (ctx.preview), else None."""
    return PreviewMaker(every_n_steps, base_model) if getattr(ctx, "preview", False) else None


def preview_extra(maker: PreviewMaker | None, step: int, callback_kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The `extra` for ctx.progress at 1-based `step`: {"preview": base64} on preview steps, else None.

    `callback_kwargs` is what diffusers passes to callback_on_step_end; its "latents" are there
    by default (callback_on_step_end_tensor_inputs defaults to ["latents"]).
    """
    if maker is None:
        return None
    data = maker.maybe(step, callback_kwargs.get("latents"))
    return {"preview": data} if data is not None else None
