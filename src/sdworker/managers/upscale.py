"""Upscaling: ESRGAN-family models through spandrel, run in tiles, then Lanczos to the asked factor.

- A model file is found in the catalog (kind upscaler) and read without pickle (.safetensors;
  .pth/.pt/.ckpt only with --allow-pickle, then `torch.load(weights_only=True)`). spandrel
  detects its architecture (ESRGAN, Real-ESRGAN Compact, SwinIR, ...) and builds the module.
  Loaded models are `CacheEntry`s in the MemoryManager (component "upscaler"), keyed by the
  file's content, so they are cached, listed, offloaded and evicted like every other component.
- A model runs once, at its own scale, in tiles of `tile` input pixels, each tile with a margin
  of up to 32 px of its neighbours on every side; only the tile's own part of the output is kept.
  For a convolutional model whose receptive field fits in the margin, that equals one pass over
  the whole image, while memory stays bounded by the tile size.
- Lanczos (PIL) then resizes to round(factor x input): the model's scale need not be the factor.
  Without a model, Lanczos alone does the job.

spandrel's LaMa and RestoreFormer modules import torchvision when spandrel is imported, but no
upscaler needs it; on an install without a working torchvision (a CPU-only torch) a stand-in is
used for that import only (see `spandrel_module`).
"""

from __future__ import annotations

import enum
import logging
import sys
import threading
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ..errors import ModelLoadFailed, ModelNotFound, OutOfMemory, Unsupported, ValidationFailed, is_oom
from ..schemas.postprocess import PostProcessStep
from . import fingerprint
from .memory import CacheEntry, MemoryManager, collect, module_bytes

if TYPE_CHECKING:
    from PIL import Image

    from .progress import JobProgress
    from .catalog import CatalogItem, ModelCatalog

log = logging.getLogger(__name__)

DEFAULT_TILE = 512  # input pixels per tile side
MAX_OVERLAP = 32  # margin of neighbouring pixels each tile sees on every side
MIN_OOM_TILE = 64  # out of memory: halve the tile down to this, then give up
_RUNNABLE = ("SR", "Restoration")  # spandrel purposes that map an image to an image (FaceSR needs aligned faces)

# ---- spandrel ----------------------------------------------------------------------------------

_import_lock = threading.Lock()


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """What spandrel's import of `torchvision.transforms.functional` needs, raising when used."""

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    def unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise Unsupported("this model's architecture needs torchvision, which is not installed in this worker")

    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = InterpolationMode  # type: ignore[attr-defined]
    functional.rotate = unavailable  # type: ignore[attr-defined]
    functional.normalize = unavailable  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    root.transforms = transforms  # type: ignore[attr-defined]
    return {m.__name__: m for m in (root, transforms, functional)}


def _drop_modules(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def spandrel_module() -> Any:
    """spandrel, imported on first use (it imports torch); raises Unsupported when it is not installed."""
    with _import_lock:
        if "spandrel" in sys.modules and hasattr(sys.modules["spandrel"], "ModelLoader"):
            return sys.modules["spandrel"]
        try:
            import spandrel

            return spandrel
        except Exception as exc:  # noqa: BLE001  (a missing or broken torchvision raises ImportError or RuntimeError)
            if "torchvision" not in f"{getattr(exc, 'name', '')} {exc}":
                raise Unsupported(f"upscaler models need the spandrel package ({exc}); install sdworker[upscale]") from exc
            log.info("torchvision is not usable (%s); importing spandrel with a stand-in for it", exc)
        # The stand-in lives in sys.modules only while spandrel is imported, so nothing else
        # (transformers checks for torchvision) ever sees it.
        saved = {n: m for n, m in sys.modules.items() if n == "torchvision" or n.startswith("torchvision.")}
        _drop_modules("torchvision")
        _drop_modules("spandrel")  # the half-imported package from the failed attempt
        sys.modules.update(_torchvision_stand_in())
        try:
            import spandrel
        except ImportError as exc:
            raise Unsupported(f"upscaler models need the spandrel package ({exc}); install sdworker[upscale]") from exc
        finally:
            _drop_modules("torchvision")
            sys.modules.update(saved)
        return spandrel


def spandrel_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("spandrel") is not None


# ---- models ----------------------------------------------------------------------------------------


@dataclass
class LoadInfo:
    ms: float
    fresh: bool  # read from disk (False: from the cache)


class UpscalerManager:
    """Finds upscaler models in the catalog and keeps loaded ones in the shared MemoryManager.

    It holds no state of its own (the cache is the MemoryManager's), so any number of instances
    over the same memory and catalog share every loaded model.
    """

    def __init__(self, memory: MemoryManager, catalog: "ModelCatalog", allow_pickle: bool = False):
        self.memory = memory
        self.catalog = catalog
        self.allow_pickle = allow_pickle

    def resolve(self, model_id: str, field: str = "model") -> "CatalogItem":
        """The catalog item of an upscaler; every refusal happens here, before a job is queued."""
        try:
            item = self.catalog.find(model_id, "upscaler", field)
        except ModelNotFound:
            other = self._other_kind(model_id, field)
            if other is None:
                raise
            raise ValidationFailed(
                f"{field}: {model_id!r} is not an upscaler (its kind is {other.kind})",
                [{"path": field, "message": f"kind {other.kind}, not upscaler"}],
            ) from None
        if item.pickle and not self.allow_pickle:
            from .locator import pickle_refused

            raise pickle_refused(model_id, field)
        if not spandrel_installed():
            raise Unsupported(
                f"{field}: running upscaler models needs the spandrel package, which is not installed; "
                "install sdworker[upscale], or leave the model out for Lanczos",
                [{"path": field, "message": "spandrel is not installed"}],
            )
        return item

    def _other_kind(self, model_id: str, field: str) -> "CatalogItem | None":
        try:
            return self.catalog.find(model_id, None, field)
        except Exception:  # noqa: BLE001  (not found, or ambiguous: the upscaler's own error stands)
            return None

    @contextmanager
    def use(self, item: "CatalogItem", device: str) -> Iterator[tuple[Any, LoadInfo]]:
        """The model's spandrel descriptor on `device`, pinned in the cache while the block runs."""
        t0 = time.perf_counter()
        key = fingerprint.of_file(item.path, "upscaler")
        entry = self.memory.get(key)
        fresh = entry is None
        if entry is None:
            descriptor = self.load(item)
            entry = self.memory.put(
                CacheEntry(key, "upscaler", descriptor, module_bytes(descriptor.model), "cpu", "fp32", str(item.path), {item.model_id})
            )
        else:
            entry.model_ids.add(item.model_id)
        with self.memory.pinned([key]):
            self.memory.place([key], device)
            yield entry.obj, LoadInfo(round((time.perf_counter() - t0) * 1000, 2), fresh)

    def load(self, item: "CatalogItem") -> Any:
        """Read the file and let spandrel build the model (fp32, on the CPU, in eval mode)."""
        spandrel = spandrel_module()
        try:
            state = self._state_dict(item)
            descriptor = spandrel.ModelLoader("cpu").load_from_state_dict(spandrel.canonicalize_state_dict(state))
        except spandrel.UnsupportedModelError:
            raise ModelLoadFailed(f"upscaler {item.model_id!r}: spandrel does not know this architecture") from None
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadFailed(f"upscaler {item.model_id!r} could not be loaded: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose not in _RUNNABLE:
            raise ModelLoadFailed(f"upscaler {item.model_id!r} is a {descriptor.purpose} model ({descriptor.architecture.name}), not an image upscaler")
        descriptor.model.eval()
        log.info("loaded upscaler %s: %s x%d", item.model_id, descriptor.architecture.name, descriptor.scale)
        return descriptor

    def _state_dict(self, item: "CatalogItem") -> dict[str, Any]:
        if item.path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(item.path), device="cpu")
        if not self.allow_pickle:  # resolve() refused it already; a second guard for other callers
            raise ModelLoadFailed(f"upscaler {item.model_id!r} is a pickle file; start the worker with --allow-pickle to load it")
        import torch

        return torch.load(str(item.path), map_location="cpu", weights_only=True)


# ---- running ---------------------------------------------------------------------------------------


def target_size(width: int, height: int, factor: float) -> tuple[int, int]:
    return max(1, round(width * factor)), max(1, round(height * factor))


def tiles(height: int, width: int, tile: int, overlap: int) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """(core, window) boxes as (top, left, bottom, right): cores cover the image once, windows add the margin."""
    if tile <= 0 or (height <= tile and width <= tile):
        box = (0, 0, height, width)
        return [(box, box)]
    out = []
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            window = (max(0, top - overlap), max(0, left - overlap), min(height, bottom + overlap), min(width, right + overlap))
            out.append(((top, left, bottom, right), window))
    return out


def overlap_for(tile: int) -> int:
    return min(MAX_OVERLAP, tile // 4)


def run_model(
    descriptor: Any,
    image: "Image.Image",
    tile: int = DEFAULT_TILE,
    on_tile: Callable[[int, int], None] | None = None,
) -> "Image.Image":
    """The model's output for an RGB image (its own scale), computed tile by tile."""
    import numpy as np
    import torch
    from PIL import Image

    spandrel = spandrel_module()
    if descriptor.tiling == spandrel.ModelTiling.INTERNAL:
        tile = 0  # the model needs the whole image (and tiles inside itself)
    arr = np.asarray(image.convert("RGB"))
    pixels = torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0)
    with torch.inference_mode():
        x = pixels.to(device=descriptor.device, dtype=descriptor.dtype) / 255.0
        while True:
            try:
                y = _tiled(descriptor, x, tile, on_tile)
                break
            except Exception as exc:  # noqa: BLE001
                if not is_oom(exc):
                    raise
                collect()
                h, w = arr.shape[:2]
                smaller = (tile or max(h, w)) // 2
                if smaller < MIN_OOM_TILE:
                    raise OutOfMemory(f"out of memory upscaling, also with {tile}px tiles; free VRAM or use a smaller image") from exc
                log.warning("out of memory upscaling with tile %s; retrying with %d", tile or "none", smaller)
                tile = smaller
        out = (y[0].float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(out, "RGB")


def _tiled(descriptor: Any, x: Any, tile: int, on_tile: Callable[[int, int], None] | None) -> Any:
    import torch

    _, _, h, w = x.shape
    s = descriptor.scale
    boxes = tiles(h, w, tile, overlap_for(tile))
    if len(boxes) == 1:
        y = descriptor(x)
        if on_tile is not None:
            on_tile(1, 1)
        return y
    y = torch.empty((1, descriptor.output_channels, h * s, w * s), dtype=x.dtype, device=x.device)
    for i, ((top, left, bottom, right), (wt, wl, wb, wr)) in enumerate(boxes):
        part = descriptor(x[:, :, wt:wb, wl:wr])
        y[:, :, top * s : bottom * s, left * s : right * s] = part[:, :, (top - wt) * s : (bottom - wt) * s, (left - wl) * s : (right - wl) * s]
        if on_tile is not None:
            on_tile(i + 1, len(boxes))
    return y


def lanczos(image: "Image.Image", size: tuple[int, int]) -> "Image.Image":
    from PIL import Image

    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def upscale(
    image: "Image.Image",
    factor: float,
    descriptor: Any | None = None,
    tile: int | None = None,
    on_tile: Callable[[int, int], None] | None = None,
) -> "Image.Image":
    """The image at round(factor x its size): the model at its own scale (if any), then Lanczos."""
    size = target_size(image.width, image.height, factor)
    if descriptor is not None:
        image = run_model(descriptor, image, DEFAULT_TILE if tile is None else tile, on_tile)
    return lanczos(image.convert("RGB"), size)


# ---- post_processing in a generation ----------------------------------------------------------------


def check_post_processing(
    specs: Sequence[PostProcessStep | dict[str, Any]],
    upscalers: UpscalerManager,
    field: str = "post_processing",
    max_pixels: int | None = None,
    size: tuple[int, int] | None = None,
) -> list[PostProcessStep]:
    """Validate a post_processing list before the job is queued (models exist, are upscalers, fit)."""
    from pydantic import ValidationError

    from ..errors import from_validation

    steps: list[PostProcessStep] = []
    w, h = size or (0, 0)
    for i, spec in enumerate(specs):
        path = f"{field}[{i}]"
        try:
            step = spec if isinstance(spec, PostProcessStep) else PostProcessStep.model_validate(spec)
        except ValidationError as exc:
            raise from_validation(exc, path) from None
        if step.model is not None:
            upscalers.resolve(step.model, f"{path}.model")
        w, h = target_size(w, h, step.factor)
        if max_pixels is not None and size is not None and w * h > max_pixels:
            raise ValidationFailed(
                f"{path}.factor: the result would be {w}x{h}, over the limit of {max_pixels} pixels",
                [{"path": f"{path}.factor", "message": f"result {w}x{h} is over {max_pixels} pixels"}],
            )
        steps.append(step)
    return steps


def apply_post_processing(
    images: list["Image.Image"],
    specs: Sequence[PostProcessStep | dict[str, Any]],
    ctx: "JobProgress | None",
    upscalers: UpscalerManager,
    device: str = "cpu",
) -> list["Image.Image"]:
    """Run each step over every image, in order; checks for cancellation between tiles.

    `specs` should have been through `check_post_processing` at plan time; it is validated
    again here (cheap), so a bad step is a validation error, not a crash. Emits no progress
    events (the generation's steps own those); logs each step to the session.
    """
    steps = check_post_processing(specs, upscalers)
    out = list(images)
    for step in steps:
        tick = (lambda _done, _total: ctx.check_cancelled()) if ctx is not None else None
        if step.model is None:
            out = [upscale(img, step.factor) for img in out]
            continue
        item = upscalers.resolve(step.model)
        with upscalers.use(item, device) as (descriptor, info):
            if ctx is not None:
                ctx.log(f"upscaler {item.model_id} " + ("loaded" if info.fresh else "from the cache") + f" in {info.ms:.0f} ms")
            out = [upscale(img, step.factor, descriptor, step.tile, tick) for img in out]
    return out
