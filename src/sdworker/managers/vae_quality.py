"""Round-trip quality of a VAE: encode → decode, scored against the input (PSNR, SSIM).

SSIM is the Wang et al. (2004) index on the luma channel with an 11x11 Gaussian window
(sigma 1.5), K1 = 0.01, K2 = 0.03, averaged over the image, the way most tools report it.
The built-in set is procedural (gradients, edges, texture, a smooth disc): deterministic,
and it stresses what VAEs get wrong (fine detail, saturated colour, flat areas).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def builtin_images(size: int) -> list[Any]:
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1)
    gradient = np.stack([x, y, 1 - x], -1)
    checker = (((np.floor(x * 16) + np.floor(y * 16)) % 2)[..., None] * np.array([1.0, 0.9, 0.2], np.float32))
    rng = np.random.default_rng(1234)
    texture = np.clip(0.5 + 0.25 * rng.standard_normal((size, size, 3)).astype(np.float32), 0, 1)
    disc = ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.09)[..., None] * np.array([0.9, 0.1, 0.2], np.float32) + 0.05
    return [Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8), "RGB") for a in (gradient, checker, texture, disc)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _gauss(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    ax = np.arange(size) - size // 2
    g = np.exp(-(ax**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 'valid' convolution (no padding artefacts at the borders)."""
    n = len(k)
    rows = sum(k[i] * img[:, i : img.shape[1] - n + 1 + i] for i in range(n))
    return sum(k[i] * rows[i : rows.shape[0] - n + 1 + i, :] for i in range(n))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    def luma(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]

    x, y = luma(a), luma(b)
    k = _gauss()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _blur(x, k), _blur(y, k)
    sxx = _blur(x * x, k) - mx * mx
    syy = _blur(y * y, k) - my * my
    sxy = _blur(x * y, k) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def round_trip(vae: Any, image: Any, device: str) -> np.ndarray:
    """Encode an RGB PIL image with `vae` and decode it again; uint8 HxWx3."""
    import torch

    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    dtype = next(vae.parameters()).dtype
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].to(device=device, dtype=dtype)
    with torch.inference_mode():
        latents = vae.encode(x).latent_dist.mode()
        out = vae.decode(latents).sample
    out = ((out[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return out


def score(vae: Any, images: list[Any], device: str) -> dict[str, Any]:
    psnrs, ssims = [], []
    for img in images:
        out = round_trip(vae, img, device)
        ref = np.asarray(img.convert("RGB"))
        psnrs.append(psnr(ref, out))
        ssims.append(ssim(ref, out))
    finite = [p for p in psnrs if math.isfinite(p)]
    return {
        "psnr": round(sum(finite) / len(finite), 3) if finite else None,
        "ssim": round(sum(ssims) / len(ssims), 5),
        "per_image": [{"psnr": round(p, 3) if math.isfinite(p) else None, "ssim": round(s, 5)} for p, s in zip(psnrs, ssims)],
    }
