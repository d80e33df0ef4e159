"""Step previews: latent2rgb JPEGs, their size bounds, their steps, and what they cost."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sdworker.families.sd.knowledge import LATENT_RGB
from sdworker.managers.preview import MAX_SIDE, PreviewMaker, latents_to_rgb, preview_extra, preview_jpeg, preview_maker


def _open(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "JPEG"
    img.load()
    return img


def _latents(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator("cpu").manual_seed(seed))


def test_rgb_shape_and_values() -> None:
    rgb = latents_to_rgb(_latents(1, 4, 64, 48), "sdxl")
    assert rgb.shape == (64, 48, 3) and rgb.dtype == np.uint8
    # zero latents map to the bias: mid-gray for SD1.5 (no bias), SDXL's own bias otherwise
    assert (latents_to_rgb(torch.zeros(1, 4, 2, 2), "sd_1_5") == 128).all()
    bias = np.round((np.array(LATENT_RGB["sdxl"][1]) + 1.0) * 127.5)
    assert np.array_equal(latents_to_rgb(torch.zeros(1, 4, 2, 2), "sdxl")[1, 1], bias.astype(np.uint8))
    # one channel pushed up gives that row of the factor matrix
    lat = torch.zeros(1, 4, 1, 1)
    lat[0, 0] = 1.0
    want = np.round((np.array(LATENT_RGB["sd_1_5"][0][0]) + 1.0) * 127.5)
    assert np.array_equal(latents_to_rgb(lat, "sd_1_5")[0, 0], want.astype(np.uint8))


@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (1, 4, 8, 8), (2, 4, 7, 13), (1, 4, 128, 128), (1, 4, 96, 160), (1, 4, 300, 200)])
def test_any_four_channel_size_gives_a_bounded_jpeg(shape: tuple[int, ...]) -> None:
    b64 = preview_jpeg(_latents(*shape), "sd_1_5")
    assert b64 is not None
    img = _open(b64)
    h, w = shape[2], shape[3]
    if max(h, w) <= 256:
        assert img.size == (w, h)  # the latents' own size
    else:
        assert max(img.size) == 256 and abs(img.width / img.height - w / h) < 0.02
    assert len(b64) < 60_000  # small: fits a progress event


def test_other_latent_spaces_give_none() -> None:
    assert latents_to_rgb(_latents(1, 16, 32, 32), "flux") is None
    assert preview_jpeg(_latents(1, 3, 32, 32), "sdxl") is None
    assert PreviewMaker(1, "sdxl").maybe(1, _latents(1, 16, 8, 8)) is None


def test_batch_uses_the_first_image_and_video_the_first_frame() -> None:
    first = _latents(1, 4, 32, 32, seed=1)
    batch = torch.cat([first, _latents(3, 4, 32, 32, seed=2) * 5])
    assert preview_jpeg(batch, "sdxl") == preview_jpeg(first, "sdxl")
    video = torch.stack([first[0], first[0] * 3], dim=1).unsqueeze(0)  # (1, 4, 2 frames, 32, 32)
    assert preview_jpeg(video, "sdxl") == preview_jpeg(first, "sdxl")


def test_half_precision_and_non_finite_latents() -> None:
    lat = _latents(1, 4, 16, 16).half()
    lat[0, 0, 0, 0] = float("nan")
    lat[0, 1, 0, 1] = float("inf")
    assert _open(preview_jpeg(lat, "sdxl")).size == (16, 16)


def test_maker_previews_every_nth_step_only() -> None:
    lat = _latents(1, 4, 32, 32)
    maker = PreviewMaker(every_n_steps=5, base_model="sdxl")
    got = {step: maker.maybe(step, lat) for step in range(0, 21)}
    assert [s for s, v in got.items() if v is not None] == [5, 10, 15, 20]
    assert maker.made == 4
    assert maker.maybe(5, None) is None
    with pytest.raises(ValueError):
        PreviewMaker(0, "sdxl")


def test_callback_hook() -> None:
    lat = _latents(2, 4, 24, 24)
    assert preview_extra(None, 5, {"latents": lat}) is None
    maker = PreviewMaker(2, "sd_1_5")
    assert preview_extra(maker, 1, {"latents": lat}) is None
    extra = preview_extra(maker, 2, {"latents": lat})
    assert set(extra) == {"preview"} and _open(extra["preview"]).size == (24, 24)
    assert preview_extra(maker, 2, {}) is None  # a pipeline that passes no latents
    assert preview_maker(SimpleNamespace(preview=False), "sdxl") is None
    made = preview_maker(SimpleNamespace(preview=True), "sd_1_5", every_n_steps=3)
    assert made is not None and made.every_n_steps == 3 and made.base_model == "sd_1_5"


def test_previews_of_128_latents() -> None:
    """A 1024 px SDXL run's latents (4x128x128) give a preview at every step asked, within the size
    bound. What it costs is measured in bench/adapters.py (a time is no test's pass criterion)."""
    lat = _latents(1, 4, 128, 128)
    maker = PreviewMaker(1, "sdxl")
    for step in range(1, 31):
        out = maker.maybe(step, lat)
        assert out is not None
        img = _open(out)
        assert img.size == (128, 128) and max(img.size) <= MAX_SIDE  # one pixel per latent, under the bound
    assert maker.made == 30
