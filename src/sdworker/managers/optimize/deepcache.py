"""A DeepCache-style step cache for UNets (SD 1.5, SDXL, Pony).

DeepCache (Ma et al., 2023) observes that a UNet's deep features change little from one step
to the next: every `interval` calls run the whole UNet; the calls between rerun only the shallow
blocks (conv_in, the outermost `branch + 1` down and up levels, conv_out) and reuse the deep
blocks' outputs of the last full call. The `DeepCache` package (0.1.1, 2023) ships a copy of an
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
        downs, ups = list(unet.down_blocks), list(unet.up_blocks)
        b = max(0, min(branch, len(downs) - 2))
        self.unet = unet
        self.interval, self.start = interval, start
        # The deep part: everything between the outermost b+1 levels on the way down and up.
        self.deep = [*downs[b + 1 :], unet.mid_block, *ups[: len(ups) - 1 - b]]
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
