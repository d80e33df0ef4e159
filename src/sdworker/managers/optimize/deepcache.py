"""A DeepCache-style step cache for UNets (SD 1.5, SDXL, Pony).

DeepCache (Ma et al., 2023) observes that a UNet's deep features change little from one step
to the next: every `interval` calls run the whole UNet; the calls between rerun only the shallow
path and reuse what the rest gave in the last full call. As in the paper's finest branch, the
shallow path is conv_in, the last `branch + 1` layers of the outermost up block (each fed the
cached hidden state and its skip connection, conv_in's output for the very last layer) and
conv_out; every down block, the mid block, the inner up blocks and the outermost up block's
earlier layers answer from the cache. A cached call therefore costs a few percent of a full one. The `DeepCache` package (0.1.1, 2023) ships a copy of an
old UNet forward that no longer matches diffusers' and does not take ControlNet residuals, so this
one wraps the deep blocks' `forward` instead: the UNet's own forward still runs, with LoRA,
ControlNet, T2I residuals and any diffusers version, and the blocks are restored on exit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class DeepCache:
    """Use as a context manager around the pipeline call; `skipped` counts the cached calls."""

    def __init__(self, unet: Any, interval: int = 3, branch: int = 0, start: int = 1):
        ups = list(unet.up_blocks)
        last = ups[-1]
        resnets, attentions = list(last.resnets), list(getattr(last, "attentions", None) or [])
        keep = max(1, min(branch + 1, len(resnets)))  # layers of the outermost up block that rerun
        self.unet = unet
        self.interval, self.start = interval, start
        # The deep part: every module whose output a cached call reuses (called in the same order
        # with the same shapes on every call, so each module's last output stands in for it).
        self.deep = [*unet.down_blocks, unet.mid_block, *ups[:-1], *resnets[:-keep], *attentions[: len(attentions) - keep]]
        self.calls = 0
        self.skipped = 0
        self._skip = False
        self._outputs: dict[int, tuple[Any, Any]] = {}  # block index -> (input shape, output)
        self._handle: Any = None

    def _pre(self, module: Any, args: tuple) -> None:
        """Before each UNet call: decide whether this one reuses the deep features."""
        n = self.calls
        self.calls += 1
        self._skip = n >= self.start and n % self.interval != 0 and len(self._outputs) == len(self.deep)
        if self._skip:
            self.skipped += 1

    def _wrap(self, i: int, forward: Callable[..., Any]) -> Callable[..., Any]:
        def cached_forward(*args: Any, **kwargs: Any) -> Any:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            shape = tuple(getattr(hidden, "shape", ()))
            kept = self._outputs.get(i)
            if self._skip and kept is not None and kept[0] == shape:
                return kept[1]
            out = forward(*args, **kwargs)
            self._outputs[i] = (shape, out)
            return out

        return cached_forward

    def __enter__(self) -> DeepCache:
        for i, block in enumerate(self.deep):
            block.forward = self._wrap(i, block.forward)  # an instance attribute over the class's forward
        self._handle = self.unet.register_forward_pre_hook(self._pre)
        return self

    def __exit__(self, *exc: object) -> None:
        for block in self.deep:
            block.__dict__.pop("forward", None)
        if self._handle is not None:
            self._handle.remove()
        self._outputs.clear()
