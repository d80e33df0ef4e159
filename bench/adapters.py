#!/usr/bin/env python
"""Adapter benchmarks: LoRA set switch on a loaded model, and the cost of preview images.

    python bench/adapters.py [--size full|tiny] [--work DIR] [--write docs/benchmarks.md]

(a) switching the LoRA set of a loaded model (the `adapters_ms` a job reports: set_adapters on
    adapters already injected) vs a cold load of the model from disk.  target: < 10 % of the load
    Also shown: the first use of a LoRA (read + injection into the UNet and text encoder).
(b) the same text2img with `preview: true` vs without (inference_ms, alternating runs).
                                                                        target: < 3 % slower
(c) one preview image of a 1024 px SDXL run's latents (4x128x128), in process (managers/preview.py),
    median of 30 after a warm-up.                                       target: < 15 ms

`--size full` (default): the SD 1.5 architecture with random weights (bench/models.py builds it;
`--work DIR` keeps it between runs) and two rank-16 kohya LoRAs over all its attention
projections; 256x256. `--size tiny`: the tiny test model, for a smoke run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models as mbench
import run as core

SECTION = "## Adapters (LoRA switch) and previews"


def make_kohya_lora(model: Path, path: Path, rank: int, seed: int) -> None:
    """A kohya-format LoRA over every attention projection of the model's UNet (SD 1.x names)."""
    import json

    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads((model / "unet" / "config.json").read_text()))
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, mod in unet.named_modules():
        if not isinstance(mod, torch.nn.Linear) or not any(name.endswith(s) for s in ("to_q", "to_k", "to_v", "to_out.0")):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = (torch.randn(rank, mod.in_features, generator=g) / mod.in_features**0.5).half()
        state[f"{key}.lora_up.weight"] = (torch.randn(mod.out_features, rank, generator=g) * 0.01).half()
        state[f"{key}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"ss_base_model_version": "sd_v1", "ss_network_dim": str(rank)})


def preview_cost(runs: int = 30) -> tuple[float, float]:
    """(median, max) ms of one preview JPEG of 4x128x128 latents (a 1024 px SDXL step), in process."""
    import time

    import torch

    from sdworker.managers.preview import PreviewMaker

    lat = torch.randn(1, 4, 128, 128, generator=torch.Generator("cpu").manual_seed(0))
    maker = PreviewMaker(1, "sdxl")
    maker.maybe(1, lat)  # warm-up
    times = []
    for step in range(1, runs + 1):
        t0 = time.perf_counter()
        assert maker.maybe(step, lat) is not None
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--work", help="keep the built models here (reused when present)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write", metavar="PATH")
    args = p.parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    tmp = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="sdw-bench-adapters-"))
    models = tmp / "models"
    size = 256 if args.size == "full" else 64
    rows: list[tuple[str, str, str, str, str]] = []
    try:
        if not (models / "model-a" / "model_index.json").is_file():
            models.mkdir(parents=True, exist_ok=True)
            if args.size == "tiny":
                from sdworker.tiny import make_tiny_model

                make_tiny_model("sd15", models / "model-a")
            else:
                mbench.build_full(models / "model-a", None, None)
        for i in (1, 2):
            if not (models / "lora" / f"style{i}.safetensors").is_file():
                make_kohya_lora(models / "model-a", models / "lora" / f"style{i}.safetensors", 16 if args.size == "full" else 4, i)
        run = mbench.Run(tmp, models)
        c = run.worker(64000)
        base = {"model_id": "model-a", "prompt": "a lighthouse at dusk", "width": size, "height": size, "steps": args.steps, "seed": 5}
        cold = run.call(c, "inference.text2img", base)["performance"]
        assert cold["loaded_from"] == "disk", cold
        load_ms = cold["load_ms"]
        sets = [[{"name": "lora/style1", "weight": 0.8}], [{"name": "lora/style2", "weight": 0.6}], [{"name": "lora/style1", "weight": 0.5}, {"name": "lora/style2", "weight": 0.5}]]
        first = []
        for s in sets[:2]:  # first use: read + inject
            first.append(run.call(c, "inference.text2img", {**base, "steps": 1, "loras": s})["performance"]["adapters_ms"])
        switch = []
        for _ in range(args.repeats):
            for s in sets:
                switch.append(run.call(c, "inference.text2img", {**base, "steps": 1, "loras": s})["performance"]["adapters_ms"])
        sw = statistics.median(switch)
        rows.append(("cold load of the model from disk (first job)", f"{load_ms:,.0f} ms", "-", "info", "-"))
        rows.append((f"LoRA first use: read + inject (median of {len(first)})", f"{statistics.median(first):,.1f} ms", f"{load_ms:,.0f} ms (cold load)", "info", "-"))
        rows.append((f"LoRA set switch on the loaded model (median of {len(switch)})", f"{sw:,.1f} ms", f"{load_ms:,.0f} ms (cold load)", f"< 10 % (is {100 * sw / load_ms:.2f} %)", "yes" if sw < 0.1 * load_ms else "**NO**"))
        with_p, without = [], []
        for _ in range(args.repeats):
            without.append(run.call(c, "inference.text2img", {**base, "preview": False})["performance"]["inference_ms"])
            with_p.append(run.call(c, "inference.text2img", {**base, "preview": True})["performance"]["inference_ms"])
        a, b = statistics.median(with_p), statistics.median(without)
        over = 100 * (a - b) / b
        rows.append((f"text2img {size}x{size}, {args.steps} steps, preview every 5 steps (median of {args.repeats})", f"{a:,.0f} ms", f"{b:,.0f} ms (no preview)", f"< 3 % (is {over:+.2f} %)", "yes" if over < 3 else "**NO**"))
        c.close()
        med, worst = preview_cost()
        rows.append(("one preview of 4x128x128 latents (1024 px SDXL), in process (median of 30)", f"{med:.2f} ms (max {worst:.2f})", "-", "< 15 ms", "yes" if med < 15 else "**NO**"))
    finally:
        if not args.work:
            shutil.rmtree(tmp, ignore_errors=True)
    what = "the SD 1.5 architecture with random weights and two rank-16 kohya LoRAs over all UNet attention projections" if args.size == "full" else "the tiny SD 1.5 test model and two tiny kohya LoRAs"
    section = core.doc_section(
        SECTION,
        f"Measured by `python bench/adapters.py --size {args.size}` on {what}.",
        rows,
        (
            "How: each figure is what the job reports in `performance`: `load_ms` of the first job (weights read "
            "from disk, OS file cache warm), `adapters_ms` (LoRA sets applied to the shared UNet / text encoders: "
            "adapters already injected are only re-weighted with set_adapters), `inference_ms` (the denoising "
            "loop, with and without the latent → RGB preview JPEG every 5 steps), runs alternating."
        ),
        started,
    )
    core.publish(section, args.write, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
