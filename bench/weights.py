#!/usr/bin/env python
"""Weight formats at full size: what the cache holds and what a step costs, per `precision` format.

    python bench/weights.py [--steps 2] [--write docs/benchmarks.md]

The model is the Wan 2.1 T2V 1.3B transformer architecture (diffusers' config of
Wan-AI/Wan2.1-T2V-1.3B-Diffusers) with random weights: compute and memory do not depend on the
weights. It is loaded by the worker's own component manager (managers.components.UNetManager):
from a diffusers folder in full precision, with fp8 layerwise-cast storage, quantized by torchao
(int8 weight-only), and from a Q8_0 GGUF transformer file (managers.transformer_files), the way a
request with that `precision` loads it. For each: the bytes its cache entry counts (what the memory
budgets see), the load time, and the median time of one transformer forward on a small latent
(1 frame of 128x128 px: 64 image tokens, 64 text tokens), which is enough to show each format's
per-step overhead (casting, dequantizing). It is a script, not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as core

SECTION = "## Weight formats at full size"
#: diffusers' transformer/config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers
WAN_1_3B = {
    "_class_name": "WanTransformer3DModel", "added_kv_proj_dim": None, "attention_head_dim": 128, "cross_attn_norm": True,
    "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256, "image_dim": None, "in_channels": 16, "num_attention_heads": 12,
    "num_layers": 30, "out_channels": 16, "patch_size": [1, 2, 2], "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
    "text_dim": 4096,
}


def build(folder: Path) -> Path:
    """A Wan 1.3B diffusers folder (transformer only, random fp32 weights) and its Q8_0 GGUF file."""
    import torch
    from diffusers import WanTransformer3DModel

    from sdworker.tiny.transformer_file import save_transformer_file

    torch.manual_seed(0)
    config = {k: v for k, v in WAN_1_3B.items() if not k.startswith("_")}
    model = WanTransformer3DModel(**config)
    model.save_pretrained(folder / "transformer")
    del model
    gc.collect()
    return save_transformer_file(folder, folder.parent / "wan2.1-t2v-1.3B-Q8_0.gguf")


def inputs(torch: Any) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(1, 16, 1, 16, 16, generator=gen),  # 1 frame, 128x128 px (VAE 8x): 8x8 tokens of 2x2
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, 64, 4096, generator=gen),
        "return_dict": False,
    }


def measure(entry: Any, steps: int, torch: Any) -> float:
    model = entry.obj
    args = inputs(torch)
    times = []
    with torch.inference_mode():
        model(**args)  # warm-up: first-call allocations, lazy kernels
        for _ in range(steps):
            t0 = time.perf_counter()
            model(**args)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--write", metavar="MD")
    args = ap.parse_args()
    started = dt.datetime.now(dt.timezone.utc)
    import torch

    from sdworker.managers.components import UNetManager
    from sdworker.managers.memory import MemoryManager

    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="sdw-weights-") as tmp:
        folder = Path(tmp) / "wan21-1.3b"
        t0 = time.perf_counter()
        gguf = build(folder)
        print(f"built the fp32 folder and {gguf.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        dtypes = {"fp32": torch.float32}
        formats = [("fp32, folder", "full", None), ("fp32 + fp8_e4m3fn storage", "fp8_e4m3fn", None),
                   ("fp32 + torchao int8 weight-only", "torchao_int8wo", None), ("GGUF Q8_0 file (fp32 compute)", "full", gguf)]
        base_bytes = 0
        for label, weights, path in formats:
            memory = MemoryManager(ram_budget=20 * 2**30)
            manager = UNetManager(memory, dtypes.__getitem__)
            t0 = time.perf_counter()
            if path is None:
                entry = manager.load(folder / "transformer", "diffusers", "WanTransformer3DModel", "fp32", "wan-1.3b", "transformer", weights)
            else:
                entry = manager.load_file(path, folder, "diffusers", "WanTransformer3DModel", "fp32", "wan-1.3b", weights)
            load_s = time.perf_counter() - t0
            step_ms = measure(entry, args.steps, torch)
            base_bytes = base_bytes or entry.nbytes
            rows.append((label, f"{entry.nbytes / 2**30:.2f} GiB", f"{entry.nbytes / base_bytes:.2f}", f"{load_s:.1f} s", f"{step_ms:.0f} ms"))
            print(" | ".join(rows[-1]), file=sys.stderr)
            del entry, manager, memory
            gc.collect()
    head = "| format | cache entry | of fp32 | load | forward (64 + 64 tokens) |\n|---|---|---|---|---|\n"
    table = head + "\n".join("| " + " | ".join(r) + " |" for r in rows)
    section = "\n".join([
        SECTION,
        "",
        "Wan 2.1 T2V 1.3B transformer architecture (random weights), loaded by the worker's UNetManager in each",
        "`precision` format; `bench/weights.py`.",
        "",
        f"- machine: {os.cpu_count()} logical CPU cores, no GPU; torch {torch.__version__}",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        table,
        "",
        "The cache entry is what the memory budgets count. \"load\" is the manager's load call: safetensors",
        "are memory-mapped, so the fp32 folder's weights are paged in during the warm-up forward, while fp8",
        "storage and torchao convert every weight at load. The forward is one transformer call on a 128x128,",
        "1-frame latent, median of the repeats after a warm-up; on this CPU it shows each format's per-step",
        "overhead (fp8 layerwise casting: every layer cast before it computes; GGUF: every weight dequantized).",
        "GPU figures need a lent GPU (none was lent to this task).",
    ]) + "\n"
    core.publish(section, args.write, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
