#!/usr/bin/env python
"""Speed options (`optimize`) at full size on this machine: each option alone and "max" vs plain diffusers.

    python bench/speed.py [--only sd15 sdxl wan] [--rows plain fuse_qkv ... max] [--compile-on sd15]
                          [--steps 20] [--size 256] [--write docs/benchmarks.md]

The denoisers are the full-size architectures with random weights (compute does not depend on the
weights): the SD 1.5 UNet, the SDXL UNet (with their full-size VAEs) and the Wan 2.1 1.3B
transformer (its VAE, one frame). Text encoders are left out: every row gets the same random
prompt embeddings, so the rows differ only in the denoiser's work. Each row runs the same diffusers
pipeline object with the same seed, wrapped in the worker's `optimized(...)` (the runner's wrapper)
with that row's options; "plain" is the pipeline with nothing applied. Beside each time: the
image's difference to plain (max abs over [0, 1] pixels, PSNR in dB), the denoiser calls the step
cache answered, and for compile the compile time of the first (warm-up) call and the graphs dynamo
built in the first and in the timed call (recompiles: the timed call must build none). It is a script, not a
test: ratios are taken within one run; `compile` rows are off unless asked (`--rows compile`), and
then run only for the models in `--compile-on` (all by default). A row that does not apply to a
model is left out (channels_last and deepcache: UNets; taylorseer and first_block: transformers).
The machine's 1-minute load average after each row is printed beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as core
from weights import WAN_1_3B

SECTION = "## Speed options (optimize) at full size"
ROWS = ("plain", "fuse_qkv", "channels_last", "cache", "taylorseer", "max")
ALL_ROWS = ("plain", "fuse_qkv", "channels_last", "compile", "cache", "taylorseer", "max")
OPTIONS: dict[str, Any] = {
    "plain": None,
    "fuse_qkv": {"fuse_qkv": True},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "taylorseer": {"cache": {"kind": "taylorseer"}},
    "max": "max",
}
UNET_ONLY = ("channels_last",)
DIT_ONLY = ("taylorseer",)
#: SD 1.5's UNet (diffusers' UNet2DConditionModel defaults are SD 1.x's, but for the text width)
SD15_UNET = {"cross_attention_dim": 768, "sample_size": 64}
#: stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the fields that differ from the defaults)
SDXL_UNET = {
    "sample_size": 128, "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20), "cross_attention_dim": 2048,
    "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SD_VAE = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "latent_channels": 4,
          "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4}


def build(arch: str) -> tuple[Any, dict[str, Any]]:
    """(pipeline, call kwargs with random prompt embeddings) for a full-size random-weight model."""
    import torch
    from diffusers import (
        AutoencoderKL,
        AutoencoderKLWan,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    if arch == "wan":
        config = {k: v for k, v in WAN_1_3B.items() if not k.startswith("_")}
        pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=WanTransformer3DModel(**config),
                           vae=AutoencoderKLWan(), scheduler=UniPCMultistepScheduler(flow_shift=3.0, prediction_type="flow_prediction", use_flow_sigmas=True))
        emb = {"prompt_embeds": torch.randn(1, 64, 4096, generator=g), "negative_prompt_embeds": torch.randn(1, 64, 4096, generator=g),
               "num_frames": 1, "guidance_scale": 5.0}
        return pipe, emb
    vae = AutoencoderKL(**SD_VAE)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if arch == "sd15":
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=UNet2DConditionModel(**SD15_UNET), scheduler=sched,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        emb = {"prompt_embeds": torch.randn(1, 77, 768, generator=g), "negative_prompt_embeds": torch.randn(1, 77, 768, generator=g)}
    else:
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
                                         unet=UNet2DConditionModel(**SDXL_UNET), scheduler=sched)
        emb = {"prompt_embeds": torch.randn(1, 77, 2048, generator=g), "negative_prompt_embeds": torch.randn(1, 77, 2048, generator=g),
               "pooled_prompt_embeds": torch.randn(1, 1280, generator=g), "negative_pooled_prompt_embeds": torch.randn(1, 1280, generator=g)}
    pipe.set_progress_bar_config(disable=True)
    return pipe, {**emb, "guidance_scale": 7.0}


def once(pipe: Any, arch: str, kwargs: dict[str, Any], option: Any, steps: int, size: int) -> tuple[Any, float, dict[str, Any], Any]:
    """One pipeline call under `option`: (image array, seconds, perf, effective options)."""
    import numpy as np
    import torch

    from sdworker.managers.optimize import optimized

    perf: dict[str, Any] = {}
    t0 = time.perf_counter()
    with optimized(pipe, option, None, perf) as eff, torch.inference_mode():
        out = pipe(**kwargs, num_inference_steps=steps, width=size, height=size, generator=torch.Generator().manual_seed(7), output_type="np")
    seconds = time.perf_counter() - t0
    img = np.asarray(out.frames if arch == "wan" else out.images, dtype=np.float64)
    return img, seconds, perf, eff


def graphs(first: dict[str, Any], timed: dict[str, Any]) -> str:
    """New dynamo graphs of the compiling call / the timed call (the timed one must be 0: no recompile)."""
    return f"{first.get('compiled_graphs', '-')} / {timed.get('compiled_graphs', '-')}"


def diff(a: Any, b: Any) -> tuple[float, float]:
    import numpy as np

    mse = float(np.mean((a - b) ** 2))
    return float(np.abs(a - b).max()), (math.inf if mse == 0 else 10 * math.log10(1.0 / mse))


def applies(arch: str, row: str, compile_on: list[str]) -> bool:
    if row == "compile":
        return arch in compile_on
    return not ((arch == "wan" and row in UNET_ONLY) or (arch != "wan" and row in DIT_ONLY))


def bench_arch(arch: str, rows: list[str], steps: int, size: int, compile_on: list[str]) -> list[list[str]]:
    pipe, kwargs = build(arch)
    out: list[list[str]] = []
    base = None
    plain_s = None
    once(pipe, arch, kwargs, None, 1, size)  # warm-up: lazy initialisation and first-touch of the weights
    # plain again at the end: how far the machine drifted over the rows (its image must be identical)
    for row in ["plain", *[r for r in rows if r != "plain" and applies(arch, r, compile_on)], "plain again"]:
        option = {"cache": {"kind": "first_block" if arch == "wan" else "deepcache"}} if row == "cache" else OPTIONS.get(row)
        first_s, first_perf = None, {}
        if row == "compile":  # on a CPU "max" does not compile (managers.optimize), so it needs no compiling call
            _, first_s, first_perf, _ = once(pipe, arch, kwargs, option, steps, size)  # the compiling call
        img, seconds, perf, eff = once(pipe, arch, kwargs, option, steps, size)
        if row == "plain":
            base, plain_s = img, seconds
        m, psnr = diff(img, base)
        skipped = perf.get("cache_skipped_steps")
        desc = eff.describe()
        what = ", ".join(k for k in ("compile", "fuse_qkv", "channels_last") if desc.get(k))
        if desc.get("cache"):
            what = (what + ", " if what else "") + "cache " + ", ".join(f"{k}={v}" for k, v in desc["cache"].items())
        out.append([
            arch, row, what or "-", f"{seconds:.1f} s", f"{plain_s / seconds:.2f}x" if plain_s else "-",
            f"{m:.4f}", "identical" if psnr == math.inf else f"{psnr:.1f} dB",
            "-" if skipped is None else f"{skipped} of {steps * (2 if arch == 'wan' else 1)}",  # Wan runs CFG as two calls
            f"{first_s:.0f} s" if first_s is not None else "-",
            graphs(first_perf, perf) if desc.get("compile") else "-",
            f"{os.getloadavg()[0]:.1f}",
        ])
        print(" | ".join(out[-1]), file=sys.stderr, flush=True)
    del pipe
    gc.collect()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", default=["sd15", "sdxl", "wan"], choices=["sd15", "sdxl", "wan"])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ALL_ROWS))
    ap.add_argument("--compile-on", nargs="+", default=None, choices=["sd15", "sdxl", "wan"], help="models that get the compile row (default: all)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--note", default="", help="a line about the machine's load, printed under the table")
    ap.add_argument("--write", metavar="MD")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("bench/speed.py needs torch and diffusers (install sdworker first)", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.timezone.utc)
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="sdw-speed-") as tmp:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tmp  # a cold compile cache: the first call compiles from scratch
        for arch in args.only:
            rows += bench_arch(arch, args.rows, args.steps, args.size, args.compile_on or args.only)
    head = ("| model | row | options in effect | time | vs plain | max abs diff | PSNR | cached calls | first (compiling) call | new graphs (first / timed) | load after |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    table = head + "\n".join("| " + " | ".join(r) + " |" for r in rows)
    section = "\n".join([
        SECTION,
        "",
        f"Full-size denoisers with random weights at {args.size}x{args.size}, {args.steps} steps, CFG on; each row is one call",
        "of the same diffusers pipeline, wrapped in the worker's `optimized(...)` with that row's options; `bench/speed.py`.",
        "",
        f"- machine: {os.cpu_count()} logical CPU cores, no GPU; torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        *([f"- load: {args.note}"] if args.note else []),
        "",
        table,
        "",
        "Differences are over the decoded image in [0, 1]. fuse_qkv and channels_last stay within float rounding of",
        "plain; the step cache trades a bounded change for skipped work (\"cached calls\": denoiser calls answered from",
        "the cache). `max` on a CPU is the family's step cache alone; on a GPU it adds compile, fuse_qkv and",
        "channels_last. Times include what each option costs per request (fusing, converting the memory format).",
    ]) + "\n"
    core.publish(section, args.write, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
