"""ControlNet preprocessors: turn a request's control image into what the ControlNet was trained on.

Built in, with numpy/scipy only (no OpenCV, no annotator models):
- ``none``: the image as it is (the host already sends an edge map, a pose, a depth map, ...).
- ``canny``: Canny edges, white on black, with A1111's defaults (low 100, high 200). The steps
  are OpenCV's ``cv2.Canny`` (what A1111 and the ControlNet annotators call): 3x3 Sobel
  gradients with replicated borders, L1 magnitude, the channel with the strongest gradient per
  pixel, non-maximum suppression along the quantized gradient direction, and hysteresis over
  8-connected pixels. OpenCV does not blur first, and the 100/200 thresholds are tuned to that;
  ``blur_sigma`` adds a Gaussian blur for noisy photos.
- ``invert``: 255 - image (A1111's "invert (from white bg & black line)": black-on-white
  line art to the white-on-black lines scribble/lineart ControlNets expect).
- ``threshold``: grayscale > 127 -> white, else black (A1111's "threshold"; a cheap scribble).

Every preprocessor takes and returns a PIL RGB image of the same size. numpy, scipy and PIL
are imported when a preprocessor runs, not when the worker starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..errors import ValidationFailed

CANNY_LOW = 100
CANNY_HIGH = 200
THRESHOLD = 127

# tan(22.5°) and tan(67.5°): the sector borders of the gradient direction (OpenCV's TG22, TG67).
_TG22 = 0.4142135623730950
_TG67 = _TG22 + 2.0

if TYPE_CHECKING:
    import numpy as np


def _rgb(array: "np.ndarray") -> Any:
    import numpy as np
    from PIL import Image

    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), "RGB")


def _sobel(channel: "np.ndarray") -> "tuple[np.ndarray, np.ndarray]":
    """OpenCV's 3x3 Sobel (dx, dy) with BORDER_REPLICATE, as float64."""
    import numpy as np

    p = np.pad(channel, 1, mode="edge")
    dx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    dy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return dx, dy


def canny_edges(image: Any, low: float = CANNY_LOW, high: float = CANNY_HIGH, blur_sigma: float = 0.0) -> "np.ndarray":
    """Canny edge map of a PIL image (or HxW / HxWxC uint8 array): bool HxW, True on edges."""
    import numpy as np
    from scipy import ndimage

    if low > high:
        low, high = high, low
    pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if blur_sigma > 0:
        pixels = ndimage.gaussian_filter(pixels, sigma=(blur_sigma, blur_sigma, 0), mode="nearest")
    # Gradients per channel; keep, per pixel, the channel whose L1 magnitude is largest.
    dx = np.zeros(pixels.shape[:2])
    dy = np.zeros(pixels.shape[:2])
    mag = np.full(pixels.shape[:2], -1.0)
    for c in range(pixels.shape[2]):
        cx, cy = _sobel(pixels[:, :, c])
        m = np.abs(cx) + np.abs(cy)
        take = m > mag
        dx[take], dy[take], mag[take] = cx[take], cy[take], m[take]

    # Non-maximum suppression: a pixel survives when it is the ridge across its gradient
    # direction. Outside the image the magnitude is 0; ties go one way (">" on one side,
    # ">=" on the other) so a two-pixel-wide plateau keeps one pixel, as in OpenCV.
    h, w = mag.shape
    p = np.pad(mag, 1)
    centre = p[1:-1, 1:-1]

    def at(oy: int, ox: int) -> "np.ndarray":
        return p[1 + oy : 1 + oy + h, 1 + ox : 1 + ox + w]

    ax, ay = np.abs(dx), np.abs(dy)
    horizontal = ay < ax * _TG22  # gradient along x: compare left and right
    vertical = ay > ax * _TG67  # gradient along y: compare up and down
    diagonal = ~(horizontal | vertical)
    s = np.where(dx * dy < 0, -1, 1)  # same signs: the gradient runs top-left -> bottom-right
    keep = horizontal & (centre > at(0, -1)) & (centre >= at(0, 1))
    keep |= vertical & (centre > at(-1, 0)) & (centre >= at(1, 0))
    diag_same = (centre > at(-1, -1)) & (centre > at(1, 1))
    diag_opposite = (centre > at(-1, 1)) & (centre > at(1, -1))
    keep |= diagonal & np.where(s > 0, diag_same, diag_opposite)

    # Double threshold + hysteresis: weak pixels count when 8-connected to a strong one.
    candidates = keep & (mag > low)
    strong = candidates & (mag > high)
    if not strong.any():
        return np.zeros((h, w), dtype=bool)
    labels, _ = ndimage.label(candidates, structure=np.ones((3, 3), dtype=int))
    good = np.unique(labels[strong])
    return np.isin(labels, good[good > 0])


def canny(image: Any, low: float = CANNY_LOW, high: float = CANNY_HIGH, blur_sigma: float = 0.0) -> Any:
    import numpy as np

    return _rgb(canny_edges(image, low, high, blur_sigma).astype(np.uint8) * 255)


def none(image: Any) -> Any:
    return image.convert("RGB")


def invert(image: Any) -> Any:
    import numpy as np

    return _rgb(255 - np.asarray(image.convert("RGB"), dtype=np.uint8))


def threshold(image: Any, level: int = THRESHOLD) -> Any:
    import numpy as np

    gray = np.asarray(image.convert("L"), dtype=np.uint8)
    return _rgb(np.where(gray > level, 255, 0).astype(np.uint8))


PREPROCESSORS: dict[str, Callable[[Any], Any]] = {"none": none, "canny": canny, "invert": invert, "threshold": threshold}

# Other spellings hosts send (A1111's module names and labels); compared lowercased, trimmed.
_ALIASES = {
    "": "none",
    "null": "none",
    "canny edge": "canny",
    "invert (from white bg & black line)": "invert",
    "binary": "threshold",
}


def resolve(name: str | None, path: str = "controlnets[0].preprocessor") -> str:
    """The canonical preprocessor name; an unknown one is a validation error listing the accepted ones."""
    key = "none" if name is None else name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in PREPROCESSORS:
        accepted = ", ".join(PREPROCESSORS)
        message = f"unknown preprocessor {name!r}; accepted: {accepted}"
        raise ValidationFailed(f"{path}: {message}", [{"path": path, "message": message}])
    return key


def apply(name: str, image: Any) -> Any:
    """Run preprocessor `name` (as returned by resolve) on a PIL image; returns PIL RGB."""
    return PREPROCESSORS[name](image)
