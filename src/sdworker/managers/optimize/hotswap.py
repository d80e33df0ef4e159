"""LoRA hot-swap into compiled denoiser blocks: switching LoRAs must not recompile.

Each LoRA is its own named PEFT adapter on the shared denoiser (managers.adapters), and dynamo
guards on the active adapter names and their float scalings, so every new LoRA set (or weight)
would compile the blocks again. For a compiled run the active adapters are copied instead into one
fixed adapter, the slot (PEFT's hot-swap idea, as diffusers' `enable_lora_hotswap` does it for one
LoRA): ranks side by side, zero-padded to SLOT_RANK, each LoRA's scaling (its weight included)
folded into its B columns, the slot's own scaling fixed at 1. The compiled code only ever sees the
slot, so a new LoRA set changes weights in place and reuses the graphs. The slot is made from the
first compiled LoRA set's layers; a later set that needs other layers, more rank in total, DoRA or
LoRA biases runs on its own adapters as before (it compiles once) and says so in a note.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

SLOT = "sdworker_hotswap"
SLOT_RANK = 64  # the summed rank the slot holds (diffusers' enable_lora_hotswap target_rank)
NOTE_ATTR = "_sdworker_hotswap_note"  # why the last compiled LoRA run could not hot-swap (parameters.optimize.notes)


def _layers(den: Any) -> list[tuple[str, Any]]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(n, m) for n, m in den.named_modules() if isinstance(m, LoraLayer)]


def _active(layers: list[tuple[str, Any]]) -> list[str]:
    """The adapters the LoRA layers run now (none when they are disabled)."""
    on = [m for _n, m in layers if not m.disable_adapters]
    names = {a for m in on for a in m.active_adapters if a != SLOT}
    return sorted(names)


def _why_not(layers: list[tuple[str, Any]], active: list[str]) -> str | None:
    """None when `active` fits the slot (existing or to be made); else the reason, for the note."""
    has_slot = any(SLOT in m.lora_A for _n, m in layers)
    for name, m in layers:
        used = [a for a in active if a in m.lora_A]
        if not used:
            continue
        if has_slot and SLOT not in m.lora_A:
            return f"LoRA hot-swap off: {name} is not in the compiled LoRA slot; this LoRA set compiles on its own"
        if sum(m.r[a] for a in used) > SLOT_RANK:
            return f"LoRA hot-swap off: the LoRAs' ranks add up to more than {SLOT_RANK}; this LoRA set compiles on its own"
        for a in used:
            if m.use_dora.get(a) or getattr(m.lora_B[a], "bias", None) is not None or type(m.lora_A[a]).__name__ not in ("Linear", "Conv2d"):
                return "LoRA hot-swap off: DoRA, LoRA biases or non-linear LoRA layers; this LoRA set compiles on its own"
        if has_slot:
            a_slot, b_slot = m.lora_A[SLOT].weight, m.lora_B[SLOT].weight
            for a in used:
                if m.lora_A[a].weight.shape[1:] != a_slot.shape[1:] or m.lora_B[a].weight.shape[2:] != b_slot.shape[2:]:
                    return f"LoRA hot-swap off: {name} has another LoRA layout; this LoRA set compiles on its own"
    return None


def _make_slot(den: Any, layers: list[tuple[str, Any]], active: list[str]) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    targets = sorted({n for n, m in layers if any(a in m.lora_A for a in active)})
    cfg = LoraConfig(r=SLOT_RANK, lora_alpha=SLOT_RANK, target_modules=targets, lora_dropout=0.0)  # scaling 1
    inject_adapter_in_model(cfg, den, adapter_name=SLOT)


def _fill(layers: list[tuple[str, Any]], active: list[str]) -> None:
    import torch

    with torch.no_grad():
        for _n, m in layers:
            if SLOT not in m.lora_A:
                continue
            a_slot, b_slot = m.lora_A[SLOT].weight, m.lora_B[SLOT].weight
            a_slot.requires_grad_(False)  # set_adapters of eager runs flips it, and dynamo guards on it
            b_slot.requires_grad_(False)
            a_slot.zero_()
            b_slot.zero_()
            at = 0
            for a in active:
                if a not in m.lora_A:
                    continue
                r = m.lora_A[a].weight.shape[0]
                a_slot[at:at + r].copy_(m.lora_A[a].weight)
                b_slot[:, at:at + r].copy_(m.lora_B[a].weight * float(m.scaling[a]))
                at += r
            m.scaling[SLOT] = 1.0


@contextlib.contextmanager
def hot_swapped(den: Any) -> Iterator[None]:
    """Run the active LoRAs of `den` through the slot for the block; the adapters as they were after."""
    den.__dict__.pop(NOTE_ATTR, None)
    layers = _layers(den)
    active = _active(layers) if layers else []
    reason = _why_not(layers, active) if active else None
    if not active or reason is not None:
        if reason is not None:
            den.__dict__[NOTE_ATTR] = reason
        yield
        return
    if not any(SLOT in m.lora_A for _n, m in layers):
        if not any(a in m.lora_A for _n, m in layers for a in active):  # text-encoder-only LoRAs: nothing here
            yield
            return
        try:
            _make_slot(den, layers, active)
        except Exception as exc:  # noqa: BLE001 - the run goes on with its own adapters
            den.__dict__[NOTE_ATTR] = f"LoRA hot-swap off: the slot could not be made ({type(exc).__name__}); this LoRA set compiles on its own"
            yield
            return
        layers = _layers(den)
    _fill(layers, active)
    before = [(m, m._active_adapter) for _n, m in layers]
    for m, _old in before:
        m._active_adapter = [SLOT]  # not set_adapter: that also flips requires_grad, which dynamo guards on
    try:
        yield
    finally:
        for m, old in before:
            m._active_adapter = old
