#!/usr/bin/env python
"""Model-domain benchmarks: disk load vs cached reload, and switching between two models.

    python bench/models.py [--size full|tiny] [--write docs/benchmarks.md]

(a) load of a model from disk (its weights not in the worker's cache; the OS file cache is warm,
    as it is on a host that loaded the model before) vs a reload after `model.unload_model`
    with keep_in_ram (weights in the RAM cache).                     target: cached >= 10x faster
(b) switching between two models A and B that both fit the RAM budget (`model.load_model`
    alternating A, B, ...) vs the same with a budget that holds only one (each switch reads
    from disk).                                                      info: time per switch

`--size full` (default) uses the real SD 1.5 architecture from the packaged configs with random
weights saved in fp16 (~2.1 GB per model on disk, ~4.2 GB in RAM as fp32 on the CPU); compute
and I/O do not depend on the weight values. B is A with a different UNet (scaled weights): as
with most fine-tunes, text encoder and VAE are the same, so the cache holds them once.
`--size tiny` uses the tiny test models (seconds, for a smoke run).
It is a script, not a test: it prints (and with --write, writes) the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as core  # the Child process driver and the doc writer of bench/run.py

SECTION = "## Models: load from disk vs RAM cache, switching"
CONFIGS = core.ROOT / "src" / "sdworker" / "model_configs" / "sd15"


def build_full(dst: Path, unet_scale: float | None, donor: Path | None) -> None:
    """SD 1.5 architecture, random weights, diffusers folder (fp16 on disk)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if donor is not None:  # B: A's folder with another UNet
        shutil.copytree(donor, dst)
        from safetensors.torch import load_file, save_file

        f = dst / "unet" / "diffusion_pytorch_model.safetensors"
        state = load_file(str(f))
        save_file({k: (v.float() * (unet_scale or 1.0)).half() for k, v in state.items()}, str(f))
        return
    from sdworker.tiny import tokenizer as tok

    torch.manual_seed(0)
    dst.mkdir(parents=True)
    unet = UNet2DConditionModel.from_config(json.loads((CONFIGS / "unet" / "config.json").read_text()))
    unet.half().save_pretrained(dst / "unet")
    del unet
    vae = AutoencoderKL.from_config(json.loads((CONFIGS / "vae" / "config.json").read_text()))
    vae.half().save_pretrained(dst / "vae")
    te_cfg = {k: v for k, v in json.loads((CONFIGS / "text_encoder" / "config.json").read_text()).items() if not k.startswith("_")}
    te = CLIPTextModel(CLIPTextConfig(**te_cfg))
    te.half().save_pretrained(dst / "text_encoder")
    tok.write_tokenizer_files(dst / "tokenizer", tok.PAD_EOS)  # the tiny vocabulary: ids stay in range
    shutil.copytree(CONFIGS / "scheduler", dst / "scheduler")
    shutil.copy(CONFIGS / "model_index.json", dst / "model_index.json")


def build(models: Path, size: str) -> None:
    if size == "tiny":
        from sdworker.tiny import make_tiny_model

        make_tiny_model("sd15", models / "model-a")
        build_full(models / "model-b", 1.01, models / "model-a")
        return
    build_full(models / "model-a", None, None)
    build_full(models / "model-b", 1.01, models / "model-a")


class Run:
    def __init__(self, tmp: Path, models: Path):
        self.tmp, self.models = tmp, models
        self.n = 0

    def worker(self, budget_mb: float) -> core.Child:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        argv = [core.PY, "-m", "sdworker", "--models-dir", str(self.models), "--device", "cpu", "--data-dir", "none", "--ram-budget-mb", str(budget_mb)]
        c = core.Child(argv, env, self.tmp / "worker.log")
        c.wait_ready(60)
        return c

    def call(self, c: core.Child, method: str, data: dict, timeout: float = 900) -> dict:
        self.n += 1
        return c.request({"type": method, "request_id": f"m{self.n}", "data": data}, timeout).msg["data"]  # type: ignore[index]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write", metavar="PATH")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    tmp = Path(tempfile.mkdtemp(prefix="sdw-bench-models-"))
    models = tmp / "models"
    rows: list[tuple[str, str, str, str, str]] = []
    try:
        t0 = time.perf_counter()
        build(models, args.size)
        core.log(f"built models in {time.perf_counter() - t0:.0f}s")
        r = Run(tmp, models)
        c = r.worker(64000)
        r.call(c, "inference.get_capabilities", {})  # torch imported: not counted below
        disk, cached = [], []
        for _ in range(args.repeats):
            r.call(c, "model.unload_model", {"model_id": "model-a"})
            r.call(c, "model.clear_cache", {"model_id": "model-a"})
            out = r.call(c, "model.load_model", {"model_id": "model-a", "device": "cpu"})
            assert out["loaded_from"] == "disk", out
            disk.append(out["load_ms"])
            r.call(c, "model.unload_model", {"model_id": "model-a", "keep_in_ram": True})
            out = r.call(c, "model.load_model", {"model_id": "model-a", "device": "cpu"})
            assert out["loaded_from"] == "cache", out
            cached.append(out["load_ms"])
        d, k = statistics.median(disk), statistics.median(cached)
        status = r.call(c, "model.get_cache_status", {})
        model_mb = status["ram"]["used_mb"]
        rows.append((f"load model A from disk (median of {args.repeats})", f"{d:,.0f} ms", "-", "info", "-"))
        rows.append((f"reload A from the RAM cache after unload (median of {args.repeats})", f"{k:,.1f} ms", f"{d:,.0f} ms (disk)", f">= 10x faster (is {d / k:,.0f}x)", "yes" if d / k >= 10 else "**NO**"))
        # switching, both cached
        r.call(c, "model.load_model", {"model_id": "model-b", "device": "cpu"})
        both_mb = r.call(c, "model.get_cache_status", {})["ram"]["used_mb"]
        sw = []
        for i in range(2 * args.repeats):
            out = r.call(c, "model.load_model", {"model_id": "model-a" if i % 2 == 0 else "model-b", "device": "cpu"})
            assert out["loaded_from"] == "cache", out
            sw.append(out["load_ms"])
        c.close()
        # switching with a budget that holds one model: every switch reads from disk
        c = r.worker(model_mb * 1.2)
        r.call(c, "inference.get_capabilities", {})
        r.call(c, "model.load_model", {"model_id": "model-a", "device": "cpu"})
        sw_disk = []
        for i in range(2 * args.repeats):
            out = r.call(c, "model.load_model", {"model_id": "model-b" if i % 2 == 0 else "model-a", "device": "cpu"})
            sw_disk.append(out["load_ms"])
        c.close()
        s1, s2 = statistics.median(sw), statistics.median(sw_disk)
        rows.append((f"switch A <-> B, both in the RAM budget (median of {len(sw)})", f"{s1:,.2f} ms", f"{s2:,.0f} ms (budget holds one: reads the UNet from disk)", (f"info ({s2 / s1:,.0f}x)" if s1 > 0 else "info"), "-"))
        rows.append(("RAM cache: A alone / A and B (shared text encoder and VAE)", f"{model_mb:,.0f} MB / {both_mb:,.0f} MB", f"{2 * model_mb:,.0f} MB unshared", "info", "-"))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    what = "the SD 1.5 architecture (UNet 860M, CLIP-L, VAE) with random weights, fp16 on disk, fp32 in RAM" if args.size == "full" else "the tiny SD 1.5 test model"
    section = core.doc_section(
        SECTION,
        f"Measured by `python bench/models.py --size {args.size}` on {what}; B = A with another UNet.",
        rows,
        (
            "How: `model.load_model` round trips' `load_ms` (time inside the worker). Disk load = after "
            "`model.clear_cache` of that model (the OS file cache stays warm, as on a host that loaded it before); "
            "cached = after `model.unload_model` with `keep_in_ram: true`. On a GPU the cached path is a "
            "host-to-device copy instead of a pipeline rebuild; that figure needs a lent GPU."
        ),
        started,
    )
    core.publish(section, args.write, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
