"""One pipeline runner: every diffusers call of a job goes through `PipelineRunner`.

Generation (text2img, img2img, inpainting, ControlNet, hires, refiner), batch_process and video
(Wan) all make their pipeline calls here, so progress, previews, cancel, memory modes and the
out-of-memory retry behave the same everywhere:

- `call(ctx, pipe, kwargs, steps, ...)`: one `pipe(**kwargs)` under `torch.inference_mode`, with
  the request's CPU offload for the call, forward pre-hooks on the denoiser's blocks so a force
  cancel or a timeout stops inside a step, and a `callback_on_step_end` that reports progress
  (`Steps` says how steps count over several calls), adds a latent preview every n-th step when
  the request asked (managers.preview), samples RSS, fires the out-of-memory drill
  (`SDWORKER_FAULT_OOM_AT_STEP`) and raises Cancelled or TimedOut at the step end.
- `settings(pipes, precision)`: attention slicing and VAE slicing/tiling for a run of one or more
  calls, restored after it.
- `retrying(ctx, attempt, ...)`: runs `attempt`; on out of memory (errors.is_oom) frees idle
  memory and runs it once more in the lower-memory mode (managers.lowmem), with a warning.

The seam for wrapping the call: `PipelineRunner.wrappers` is a list of factories. Each is called
with the `PipelineCall` about to run (pipeline, keyword arguments, request, device, job context)
and returns a context manager; all are entered, in list order, inside the offload and cancel
hooks and outside `torch.inference_mode`, around the one `pipe(**kwargs)`. A factory may change
`call.kwargs` or the pipeline's modules for the call (a compiled denoiser, a step cache) and must
restore what it changed when its context exits: the pipelines and their modules are shared by the
model cache. The factory reads its options from `call.request` (the job's request model). The
cancel pre-hooks are already on the denoiser's blocks when a factory runs (a compiled denoiser
keeps them only if it wraps the same modules). The worker has one runner, GenerationInterface's
`runner`, which batch and video use too: register a factory there once
(`runner.wrappers.append(factory)`), and it wraps every call of every job.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import OutOfMemory, is_oom
from . import precision
from .denoise import denoisers_of
from .lowmem import OomInjector, low_memory_mode
from .memory import MemoryManager, collect
from .preview import preview_extra, preview_maker

if TYPE_CHECKING:
    from .progress import JobProgress
    from .runtime import RssSampler

T = TypeVar("T")

# The block lists a force cancel hooks: UNet levels, Flux/SD3 transformer blocks, Wan's `blocks`.
BLOCKS = ("down_blocks", "mid_block", "up_blocks", "transformer_blocks", "blocks")


@dataclass
class Steps:
    """How one call's steps count in the job's progress (a job may make several calls).

    `total` maps the steps the pipeline says it runs (its `_num_timesteps`; 0 before it knows) to
    the job's total; `offset` is what earlier calls ran.
    """

    total: Callable[[int], int]
    offset: int = 0
    image_index: int = 0
    extra: dict[str, Any] | None = None  # fixed fields of every progress event (batch: item, group, call)


@dataclass
class PipelineCall:
    """What a wrapper factory sees of the call it wraps."""

    ctx: JobProgress
    pipe: Any
    kwargs: dict[str, Any]
    request: Any  # the job's request model (GenerationRequest, VideoRequest): its options
    device: str


CallWrapper = Callable[[PipelineCall], AbstractContextManager[Any]]


@dataclass
class PipelineRunner:
    """Runs pipeline calls for jobs; one per worker (its drill counts over the worker's life)."""

    memory: MemoryManager
    drill: OomInjector = field(default_factory=OomInjector)
    wrappers: list[CallWrapper] = field(default_factory=list)  # the seam: see the module docstring

    def call(
        self,
        ctx: JobProgress,
        pipe: Any,
        kwargs: dict[str, Any],
        steps: Steps,
        *,
        rss: RssSampler,
        request: Any = None,
        device: str = "cpu",
        offload: str = "none",
        keys: Iterable[str] = (),
        previews: str | None = None,
        drill: bool = True,
    ) -> Any:
        """One pipeline call. `previews`: the base model whose latent map previews use (None: none);
        `offload`: the CPU offload for this call ("none", "model", "sequential", "group") over the
        cache entries `keys`; `drill`: whether the out-of-memory drill may fire in it."""
        import torch

        maker = preview_maker(ctx, previews) if previews is not None else None  # None unless the request asked

        def callback(p: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
            step = steps.offset + step_index + 1
            extra = preview_extra(maker, step, callback_kwargs) if maker is not None else None
            if steps.extra:
                extra = {**steps.extra, **(extra or {})}
            ctx.progress(step, steps.total(ran(p)), image_index=steps.image_index, extra=extra)
            rss.sample()
            if drill:
                self.drill.maybe_raise(step)
            ctx.check_cancelled()
            return callback_kwargs

        info = PipelineCall(ctx, pipe, kwargs, request, device)
        with contextlib.ExitStack() as stack:
            stack.enter_context(precision.offloaded(pipe, offload, device, self.memory, list(keys)))
            stack.enter_context(force_cancel_hooks(pipe, ctx))
            for wrap in self.wrappers:
                stack.enter_context(wrap(info))
            stack.enter_context(torch.inference_mode())
            return pipe(**info.kwargs, callback_on_step_end=callback)

    @staticmethod
    def settings(pipes: list[Any], opts: Any) -> AbstractContextManager[list[str]]:
        """The request's attention/VAE slicing and tiling on the run's pipelines, restored after."""
        return precision.shared_settings(pipes, opts)

    @staticmethod
    def offload_mode(loaded: Any, opts: Any) -> str:
        """The call's CPU offload: the request's, unless the model already runs offloaded."""
        return "none" if loaded.offloaded else opts.cpu_offload

    def retrying(
        self, ctx: JobProgress, attempt: Callable[[str | None], T], pipe: Any, device: str, keys: list[str], give_up: Callable[[str], str]
    ) -> T:
        """Run `attempt(None)`; out of memory: free what is idle, then `attempt(warning)` once in the
        lower-memory mode. Out of memory again: OutOfMemory with `give_up(first line of the error)`."""
        try:
            return attempt(None)
        except Exception as exc:
            if not is_oom(exc):
                raise
            ctx.log(f"out of memory ({_first_line(exc)}); freeing idle memory and retrying once in low-memory mode", "warning")
        self.memory.offload_idle()
        collect()
        try:
            with low_memory_mode(pipe, device, self.memory, keys) as used:
                return attempt(f"ran out of memory at first; retried once with {', '.join(used)}")
        except Exception as again:
            if is_oom(again):
                collect()
                raise OutOfMemory(give_up(_first_line(again))) from again
            raise


def ran(pipe: Any) -> int:
    """The steps the pipeline's last (or current) call runs; 0 before it knows."""
    return int(getattr(pipe, "_num_timesteps", 0) or 0)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0]


@contextlib.contextmanager
def force_cancel_hooks(pipe: Any, ctx: JobProgress) -> Iterator[None]:
    """Forward pre-hooks on the denoisers' blocks (both Wan 2.2 experts), so a force cancel or a
    timeout stops inside a step rather than at its end."""
    handles = []
    for model in denoisers_of(pipe):
        for name in BLOCKS:
            block = getattr(model, name, None)
            if block is None:
                continue
            for mod in list(block) if hasattr(block, "__iter__") else [block]:
                handles.append(mod.register_forward_pre_hook(lambda *_: ctx.check_cancelled(mid_step=True)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
