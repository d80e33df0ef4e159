"""Running a pipeline call with progress, cancel at step boundaries, and force-cancel inside a step."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from .progress import JobProgress


def generators(torch: Any, seed: int, count: int) -> list[Any]:
    """Contract: image i draws its noise from its own CPU generator seeded with seed + i."""
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


def denoiser_of(pipe: Any) -> Any:
    """The pipeline's denoiser: its UNet, else its transformer (Flux, HiDream; Wan's first expert)."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else getattr(pipe, "transformer", None)


def step_callback(
    ctx: JobProgress, on_step: Callable[[], None] | None = None, drill: Callable[[int], None] | None = None
) -> Callable[..., dict]:
    """callback_on_step_end: report the step, then stop here if the job was cancelled."""

    def callback(pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        total = int(getattr(pipe, "_num_timesteps", 0) or ctx.session.total_steps)  # type: ignore[attr-defined]
        ctx.progress(step_index + 1, total)
        if on_step is not None:
            on_step()
        if drill is not None:
            drill(step_index + 1)
        ctx.check_cancelled()
        return callback_kwargs

    return callback


@contextlib.contextmanager
def force_cancel_hooks(denoiser: Any, ctx: JobProgress) -> Iterator[None]:
    """Forward pre-hooks on the denoiser's blocks so a force cancel or timeout stops mid-step."""
    handles = []
    if denoiser is not None:
        for name in ("down_blocks", "mid_block", "up_blocks", "transformer_blocks"):
            block = getattr(denoiser, name, None)
            if block is None:
                continue
            modules = list(block) if hasattr(block, "__iter__") else [block]
            for mod in modules:
                handles.append(mod.register_forward_pre_hook(lambda *_: ctx.check_cancelled(mid_step=True)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
