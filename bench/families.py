#!/usr/bin/env python
"""Per-family step time on the tiny models, through the worker and through plain diffusers.

    python bench/families.py [--steps 4] [--repeats 3] [--write docs/benchmarks.md]

For each family's tiny fixture (`sdworker make-tiny-model --arch ...`): the same request through
the worker (model warm, `performance.inference_ms`: the pipeline call) and through plain
diffusers in this process (the same pipeline class and arguments, timed around the call), as
milliseconds per denoising step, median of the repeats. The tiny models' step time is mostly
Python and framework overhead, not arithmetic: the figures compare the worker's path with
diffusers', not the families' real cost (that needs full-size weights on a GPU).
It is a script, not a test: it only prints (and with --write, writes) the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as core

SECTION = "## Model families: step time per family"
PROMPT = "a lighthouse at dusk"


@dataclass(frozen=True)
class Spec:
    arch: str  # make-tiny-model --arch
    method: str  # the worker method
    request: dict[str, Any] = field(default_factory=dict)  # besides prompt, steps, seed
    direct: dict[str, Any] = field(default_factory=dict)  # the plain diffusers call's arguments besides prompt, steps, generator


SPECS = (
    Spec("sd15", "inference.text2img", {"width": 64, "height": 64, "guidance_scale": 5.0}, {"width": 64, "height": 64, "guidance_scale": 5.0}),
    Spec("sdxl", "inference.text2img", {"width": 64, "height": 64, "guidance_scale": 5.0}, {"width": 64, "height": 64, "guidance_scale": 5.0}),
    Spec("flux-dev", "inference.text2img", {"width": 64, "height": 64, "guidance_scale": 3.5, "max_sequence_length": 64},
         {"width": 64, "height": 64, "guidance_scale": 3.5, "max_sequence_length": 64}),
    Spec("flux-schnell", "inference.text2img", {"width": 64, "height": 64, "max_sequence_length": 64},
         {"width": 64, "height": 64, "guidance_scale": 0.0, "max_sequence_length": 64}),
    # HiDream makes nothing smaller than its native area (128 latent pixels a side; the tiny VAE factor is 1)
    Spec("hidream", "inference.text2img", {"width": 128, "height": 128, "guidance_scale": 5.0}, {"width": 128, "height": 128, "guidance_scale": 5.0}),
    Spec("wan21", "inference.text2video", {"width": 64, "height": 64, "num_frames": 5, "guidance_scale": 5.0},
         {"width": 64, "height": 64, "num_frames": 5, "guidance_scale": 5.0, "output_type": "np"}),
    Spec("wan22", "inference.text2video", {"width": 64, "height": 64, "num_frames": 5, "guidance_scale": 4.0, "guidance_scale_2": 3.0},
         {"width": 64, "height": 64, "num_frames": 5, "guidance_scale": 4.0, "guidance_scale_2": 3.0, "output_type": "np"}),
)


def direct_ms(folder: Path, spec: Spec, steps: int, repeats: int) -> float:
    """Plain diffusers: median ms per step of the pipeline call (one warm-up call first)."""
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.inference_mode():
            pipe(PROMPT, num_inference_steps=steps, generator=[torch.Generator("cpu").manual_seed(5)], **spec.direct)
        if i:
            times.append((time.perf_counter() - t0) * 1e3 / steps)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", nargs="*", help="arches to run (default: all)")
    p.add_argument("--write", metavar="PATH")
    args = p.parse_args(argv)
    from sdworker.tiny import MODEL_ARCHES, make_tiny_model

    started = dt.datetime.now(dt.timezone.utc)
    tmp = Path(tempfile.mkdtemp(prefix="sdw-bench-families-"))
    models = tmp / "models"
    specs = [s for s in SPECS if s.arch in MODEL_ARCHES and (not args.only or s.arch in args.only)]
    rows: list[tuple[str, ...]] = []
    try:
        for s in specs:
            make_tiny_model(s.arch, models / f"tiny-{s.arch}")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        c = core.Child([core.PY, "-m", "sdworker", "--models-dir", str(models), "--device", "cpu", "--data-dir", "none"], env, tmp / "worker.log")
        c.wait_ready(60)
        n = 0
        for s in specs:
            data = {"model_id": f"tiny-{s.arch}", "prompt": PROMPT, "steps": args.steps, "seed": 5, **s.request}
            per_step = []
            for i in range(args.repeats + 1):  # the first run loads the model
                n += 1
                msg = c.request({"type": s.method, "request_id": f"f{n}", "data": data}, 900).msg
                perf = msg["data"]["performance"]  # type: ignore[index]
                if i:
                    per_step.append(perf["inference_ms"] / args.steps)
            worker = statistics.median(per_step)
            direct = direct_ms(models / f"tiny-{s.arch}", s, args.steps, args.repeats)
            core.log(f"{s.arch}: worker {worker:.1f} ms/step, diffusers {direct:.1f} ms/step")
            shape = f"{s.request['width']}x{s.request['height']}" + (f"x{s.request['num_frames']}f" if "num_frames" in s.request else "")
            rows.append((f"tiny {s.arch}, {s.method.split('.')[1]} {shape}, {args.steps} steps (median of {args.repeats})",
                         f"{worker:,.1f} ms/step", f"{direct:,.1f} ms/step (plain diffusers)", f"info (ratio {worker / direct:.2f})", "-"))
        c.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    section = core.doc_section(
        SECTION,
        f"Measured by `python bench/families.py --steps {args.steps} --repeats {args.repeats}` on the tiny fixtures "
        "(`sdworker make-tiny-model --arch ...`: real architectures, tiny configs, random weights).",
        rows,
        "How: worker = `performance.inference_ms` / steps of warm runs (the first run, which loads the model, is not "
        "counted); plain diffusers = the same pipeline from the same folder in the bench process, timed around the "
        "call, after one warm-up call. Both include text encoding and the VAE decode. Not measured here: FLUX.1-dev "
        "architecture at 1024², 28 steps, and Wan 1.3B at 480p, 81 frames: both need a lent GPU, and none was lent "
        "to this task.",
        started,
    )
    core.publish(section, args.write, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
