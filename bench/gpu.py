#!/usr/bin/env python
"""SDXL 1024x1024, 30 steps, batch 1, end to end through the worker on a GPU: plain fp16 vs each option vs "max".

    python bench/gpu.py [--work DIR] [--steps 30] [--size 1024] [--write docs/benchmarks.md]
    python bench/gpu.py --smoke      # the same rows on this CPU with the tiny SDXL, to check the script

One script for a lent GPU machine, under 10 minutes: it builds a full-size SDXL folder with random
fp16 weights (UNet, VAE, both text encoders at their real sizes; the tiny tokenizers, which only
change the token ids), starts the worker (`--device cuda --dtype fp16`), sends one warm-up request,
then per row one request whose `performance.inference_ms` and `total_ms` are read back. Rows that
compile are sent twice: the first (compiling) request's time is its own column. A row whose option
this machine cannot take (an attention backend that is not installed) is listed with the worker's
validation message. Beside each time: the image's difference to the plain fp16 image of the same
seed (max abs over 8-bit pixels, PSNR). Writes its own section of docs/benchmarks.md with --write.
`--smoke` runs every row on the CPU with the tiny SDXL at 64x64 and 2 steps: its times mean nothing,
it only shows that the script, the worker and each row work before a GPU's minutes are spent.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as core
from speed import SD_VAE, SDXL_UNET

SECTION = "## SDXL on a GPU: optimize end to end"
ROWS: list[tuple[str, Any]] = [
    ("plain fp16", None),
    ("fuse_qkv", {"fuse_qkv": True}),
    ("channels_last", {"channels_last": True}),
    ("attention flash", {"attention": "flash"}),
    ("attention sage", {"attention": "sage"}),
    ("cache (deepcache 3)", {"cache": {"kind": "deepcache", "interval": 3}}),
    ("compile", {"compile": True}),
    ("max", "max"),
]
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768}
CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280,
          "hidden_act": "gelu"}


def build(folder: Path) -> None:
    """A full-size SDXL diffusers folder with random fp16 weights, over the tiny model's tokenizers and scheduler."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdworker.tiny import make_tiny_model

    if (folder / "model_index.json").exists() and (folder / ".full").exists():
        return
    make_tiny_model("sdxl", folder)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        parts = {
            "unet": UNet2DConditionModel(**SDXL_UNET),
            "vae": AutoencoderKL(**SD_VAE, scaling_factor=0.13025, sample_size=1024),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L, vocab_size=49408)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G, vocab_size=49408)),
        }
    for name, model in parts.items():
        model.to(torch.float16).save_pretrained(folder / name)
        del model
    (folder / ".full").write_text("full-size random weights\n")


def pixels(resp: dict[str, Any]) -> Any:
    import numpy as np
    from PIL import Image

    b64 = resp["data"]["images"][0]["base64"]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.float64)


def difference(a: Any, b: Any) -> tuple[str, str]:
    """(max abs over 8-bit pixels, PSNR) of two images."""
    import numpy as np

    if a is None or b is None:
        return "-", "-"
    mse = float(np.mean((a - b) ** 2))
    return f"{np.abs(a - b).max():.0f}", "identical" if mse == 0 else f"{10 * math.log10(255.0 ** 2 / mse):.1f} dB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="where the model folder is built (kept for the next run)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--write", metavar="MD")
    ap.add_argument("--smoke", action="store_true", help="every row on the CPU with the tiny SDXL (64x64, 2 steps): checks the script, measures nothing")
    args = ap.parse_args()
    if args.smoke:
        args.size, args.steps, args.write = 64, 2, None
    try:
        import torch
    except ImportError:
        print("bench/gpu.py needs torch and diffusers (install sdworker first)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available() and not args.smoke:
        print("bench/gpu.py needs a CUDA GPU (--smoke checks the script on a CPU)", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.timezone.utc)
    work = Path(args.work or tempfile.mkdtemp(prefix="sdw-gpu-"))
    models = work / "models"
    t0 = time.perf_counter()
    if args.smoke:
        from sdworker.tiny import make_tiny_model

        if not (models / "sdxl-full" / "model_index.json").exists():
            make_tiny_model("sdxl", models / "sdxl-full")
    else:
        build(models / "sdxl-full")
    print(f"built the model in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    device = ["--device", "cpu"] if args.smoke else ["--device", "cuda", "--dtype", "fp16"]
    argv = [sys.executable, "-m", "sdworker", "--models-dir", str(models), "--output-dir", str(work / "out"),
            "--data-dir", str(work / "data"), *device]
    child = core.Child(argv, env, work / "worker.log")
    rows: list[list[str]] = []
    try:
        child.wait_ready(120)
        base = {"model_id": "sdxl-full", "prompt": "a lighthouse at dusk", "width": args.size, "height": args.size,
                "steps": args.steps, "guidance_scale": 6.0, "seed": 1, "output": {"format": "png"}}
        n = 0

        def send(option: Any) -> dict[str, Any]:
            nonlocal n
            n += 1
            msg = {"type": "inference.text2img", "request_id": f"g{n}", "data": {**base, **({"optimize": option} if option is not None else {})}}
            w = child.send(msg)
            if not w.event.wait(600) or w.msg is None:
                raise core.BenchTimeout(f"request {n}: no response in 600s")
            return w.msg

        send(None)  # warm-up: load the model, first CUDA kernels
        plain_ms = None
        plain_img = None
        for name, option in ROWS:
            first = None
            if option == "max" or (isinstance(option, dict) and option.get("compile")):
                r = send(option)
                first = r.get("data", {}).get("performance", {}).get("total_ms") if r.get("success") else None
            r = send(option)
            if not r.get("success"):
                rows.append([name, "-", "-", "-", "-", "-", "-", f"not run: {r.get('error')}"])
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
                continue
            perf = r["data"]["performance"]
            inf, total = perf["inference_ms"], perf["total_ms"]
            plain_ms = plain_ms or total
            img = pixels(r)
            plain_img = img if plain_img is None else plain_img
            eff = r["data"]["parameters"].get("optimize", {})
            what = ", ".join(k for k in ("compile", "fuse_qkv", "channels_last") if eff.get(k))
            if eff.get("attention", "native") != "native":
                what = (what + ", " if what else "") + f"attention {eff['attention']}"
            if eff.get("cache"):
                what = (what + ", " if what else "") + f"cache {eff['cache']['kind']}"
            rows.append([name, f"{total / 1000:.2f} s", f"{inf / 1000:.2f} s", f"{plain_ms / total:.2f}x",
                         f"{first / 1000:.1f} s" if first else "-", *difference(img, plain_img), what or "-"])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    finally:
        child.close(30)
    gpu = "CPU smoke run (times mean nothing)" if args.smoke else torch.cuda.get_device_name(0)
    table = ("| row | per image (total) | denoise + decode | vs plain | first (compiling) request | max abs diff | PSNR | options in effect |\n"
             "|---|---|---|---|---|---|---|---|\n") + "\n".join("| " + " | ".join(r) + " |" for r in rows)
    section = "\n".join([
        SECTION,
        "",
        f"SDXL architecture (random fp16 weights), {args.size}x{args.size}, {args.steps} steps, batch 1, through the worker",
        "(`--device cuda --dtype fp16`); `bench/gpu.py`. Times are the worker's `performance` of one request after a warm-up.",
        "",
        f"- machine: {gpu}; torch {torch.__version__}",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        table,
        "",
    ]) + "\n"
    core.publish(section, args.write, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
