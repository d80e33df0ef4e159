"""The pipeline runner on a real tiny SD 1.5 pipeline: the wrapping seam, progress, cancel hooks
cleaned up, and the out-of-memory retry driven by the fault drill. The job context is a small
stand-in (the runner reads progress, cancel and log from it); diffusers runs for real."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import cpu_gens

from sdworker.errors import Cancelled, OutOfMemory, is_oom


class Ctx:
    """What the runner uses of a JobContext."""

    def __init__(self, cancel_at: int | None = None):
        self.preview = False
        self.events: list[tuple[int, int, int, dict[str, Any] | None]] = []
        self.logs: list[tuple[str, str]] = []
        self.cancel_at = cancel_at

    def progress(self, step: int, total: int, image_index: int = 0, extra: dict[str, Any] | None = None) -> None:
        self.events.append((step, total, image_index, extra))

    def check_cancelled(self, mid_step: bool = False) -> None:
        if self.cancel_at is not None and not mid_step and len(self.events) >= self.cancel_at:
            raise Cancelled("the job was cancelled")

    def log(self, message: str, level: str = "info") -> None:
        self.logs.append((message, level))


@pytest.fixture(scope="module")
def pipe(models_dir: Path) -> Any:
    from diffusers import DiffusionPipeline

    p = DiffusionPipeline.from_pretrained(str(models_dir / "tiny-sd15"), safety_checker=None, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


def _runner(drill: str = "") -> Any:
    from sdworker.managers.lowmem import OomInjector
    from sdworker.managers.memory import MemoryManager
    from sdworker.managers.runner import PipelineRunner

    return PipelineRunner(MemoryManager(), drill=OomInjector(drill))


def _kwargs(seed: int = 3) -> dict[str, Any]:
    return {"prompt": "a red cube", "num_inference_steps": 3, "width": 64, "height": 64, "generator": cpu_gens(seed), "output_type": "np"}


def _plain(pipe: Any) -> Any:
    """Plain diffusers' images for _kwargs(), under inference mode as the runner calls it."""
    import torch

    with torch.inference_mode():
        return pipe(**_kwargs()).images


def _hooks(pipe: Any) -> int:
    return sum(len(m._forward_pre_hooks) for m in pipe.unet.modules())


def test_call_wraps_once_reports_every_step_and_equals_plain_diffusers(pipe: Any):
    from sdworker.managers.runner import PipelineCall, Steps
    from sdworker.managers.runtime import RssSampler

    runner, ctx, seen = _runner(), Ctx(), list[tuple[Any, ...]]()

    @contextlib.contextmanager
    def wrapper(call: PipelineCall) -> Iterator[None]:
        seen.append(("enter", call.request, sorted(call.kwargs), _hooks(call.pipe) > 0))
        yield
        seen.append(("exit",))

    runner.wrappers.append(wrapper)
    out = runner.call(ctx, pipe, _kwargs(), Steps(lambda n: n or 3, extra={"item": 1}), rss=RssSampler(), request="req")
    assert seen == [("enter", "req", sorted(_kwargs()), True), ("exit",)]  # inside the cancel hooks
    n = len(ctx.events)  # the pipeline's own count (PNDM runs one more timestep than asked)
    assert n >= 3 and [(s, t, i) for s, t, i, _ in ctx.events] == [(k, n, 0) for k in range(1, n + 1)]
    assert all(e == {"item": 1} for *_, e in ctx.events)
    assert _hooks(pipe) == 0
    np.testing.assert_array_equal(out.images, _plain(pipe))


def test_cancel_at_a_step_end_stops_the_call_and_removes_the_hooks(pipe: Any):
    from sdworker.managers.runner import Steps
    from sdworker.managers.runtime import RssSampler

    ctx = Ctx(cancel_at=1)
    with pytest.raises(Cancelled):
        _runner().call(ctx, pipe, _kwargs(), Steps(lambda n: n), rss=RssSampler())
    assert len(ctx.events) == 1 and _hooks(pipe) == 0


@pytest.mark.parametrize("drill, ok", [("2:1", True), ("2:2", False)])
def test_out_of_memory_retries_once_in_low_memory_mode(pipe: Any, drill: str, ok: bool):
    from sdworker.managers.runner import Steps
    from sdworker.managers.runtime import RssSampler

    runner, ctx, warnings = _runner(drill), Ctx(), list[str | None]()

    def attempt(warning: str | None) -> Any:
        warnings.append(warning)
        return runner.call(ctx, pipe, _kwargs(), Steps(lambda n: n), rss=RssSampler())

    def run() -> Any:
        return runner.retrying(ctx, attempt, pipe, "cpu", [], lambda why: f"gave up ({why})")

    if ok:
        out = run()  # attention slicing sums in another order: equal to float rounding
        np.testing.assert_allclose(out.images, _plain(pipe), atol=1e-5)
        assert warnings[0] is None and str(warnings[1]).startswith("ran out of memory at first; retried once with attention_slicing")
        assert ctx.logs[0][1] == "warning" and "retrying once in low-memory mode" in ctx.logs[0][0]
    else:
        with pytest.raises(OutOfMemory, match=r"gave up \(CUDA out of memory \(injected at step 2"):
            run()
        assert len(warnings) == 2


def test_is_oom_is_the_one_test():
    import torch

    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_oom(RuntimeError("MPS backend out of memory"))
    assert not is_oom(ValueError("width must be a multiple of 8"))
