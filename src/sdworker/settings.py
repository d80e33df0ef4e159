"""Worker settings: flags first, SDWORKER_* environment variables as the fallback."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from .limits import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_PROMPT_CHARS
from .protocol.framing import DEFAULT_MAX_LINE


@dataclass
class Settings:
    models_dirs: list[Path] = field(default_factory=list)
    output_dir: Path | None = None
    data_dir: Path | None = None
    input_dirs: list[Path] = field(default_factory=list)
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str = "auto"  # auto: fp16 on cuda, fp32 on cpu
    default_model: str | None = None
    max_queue: int = 32
    max_line_bytes: int = DEFAULT_MAX_LINE
    max_json_depth: int = 64
    max_batch_size: int = 8
    max_resolution: int = 2048
    max_steps: int = 150
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    ledger_keep: int = 10000  # finished sessions kept in the ledger (0: none)
    ledger_days: float | None = None  # also drop finished sessions older than this
    events_per_second: float = 10.0
    on_exit: str = "finish"  # finish | cancel
    allow_pickle: bool = False  # .ckpt/.pt/.bin models (then torch.load(weights_only=True))
    ram_budget_mb: float | None = None
    vram_budget_mb: float | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    # cluster mode (sdworker.cluster): a front over Ray actors, each running one worker
    ray_address: str | None = None  # auto | local | host:port; None: a single worker
    replicas: int | None = None  # None: one per GPU replica slot (GPUs / replica_gpus), else 1
    replica_gpus: float | None = None  # None: 1 when the cluster has GPUs, else 0
    replica_cpus: float = 1.0


def _env_list(name: str) -> list[str]:
    raw = os.environ.get(name, "")
    return [p for p in raw.split(os.pathsep) if p]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sdworker",
        description="Headless diffusion worker: JSON lines on stdin, JSON lines on stdout, logs on stderr.",
        epilog="Subcommand: 'sdworker make-tiny-model --arch sdxl|sd15 DIR' writes a tiny random model.",
    )
    p.add_argument("--models-dir", action="append", default=None, help="folder of models (repeatable); env SDWORKER_MODELS_DIR")
    p.add_argument("--output-dir", default=None, help="where images are saved; env SDWORKER_OUTPUT_DIR")
    p.add_argument("--data-dir", default=None, help="presets database and session ledger; env SDWORKER_DATA_DIR")
    p.add_argument("--input-dir", action="append", default=None, help="extra root images may be read from; env SDWORKER_INPUT_DIR")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["auto", "fp32", "fp16", "bf16"], help="weights dtype (default auto)")
    p.add_argument("--default-model", default=None, help="model_id used when a request names none")
    p.add_argument("--max-queue", type=int, default=None, help="jobs waiting before new ones get 'busy' (default 32)")
    p.add_argument("--max-line-bytes", type=int, default=None, help="longest accepted input line (default 64 MiB)")
    p.add_argument("--max-json-depth", type=int, default=None, help="deepest accepted JSON nesting (default 64)")
    p.add_argument("--max-batch-size", type=int, default=None, help="most images per request (default 8)")
    p.add_argument("--max-resolution", type=int, default=None, help="largest width or height (default 2048)")
    p.add_argument("--max-steps", type=int, default=None, help="most denoising steps per request (default 150)")
    p.add_argument("--max-prompt-chars", type=int, default=None, help="longest prompt or negative_prompt (default 10000)")
    p.add_argument("--max-image-bytes", type=int, default=None, help="largest input image, decoded bytes (default 50 MiB)")
    p.add_argument("--max-image-pixels", type=int, default=None, help="most pixels in an input image (default 64 Mpx)")
    p.add_argument("--ledger-keep", type=int, default=None, help="finished sessions kept in the ledger (default 10000); env SDWORKER_LEDGER_KEEP")
    p.add_argument("--ledger-days", type=float, default=None, help="also drop finished sessions older than this many days; env SDWORKER_LEDGER_DAYS")
    p.add_argument("--events-per-second", type=float, default=None, help="progress events per session per second (default 10)")
    p.add_argument("--on-exit", default=None, choices=["finish", "cancel"], help="at shutdown, let the running job finish (default) or cancel it")
    p.add_argument("--allow-pickle", action="store_true", default=None, help="also load .ckpt/.pt/.bin files (weights_only); env SDWORKER_ALLOW_PICKLE=1")
    p.add_argument("--ram-budget-mb", type=float, default=None, help="RAM cache budget (default: total RAM less 4 GiB)")
    p.add_argument("--vram-budget-mb", type=float, default=None, help="VRAM cache budget (default: free VRAM less 1.5 GiB)")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    p.add_argument("--log-format", default=None, choices=["text", "json"], help="stderr log format (default text)")
    p.add_argument("--ray-address", default=None, help="cluster mode: auto, local or HOST:PORT of a Ray cluster; env SDWORKER_RAY_ADDRESS")
    p.add_argument("--replicas", type=int, default=None, help="cluster mode: worker replicas (default: one per GPU); env SDWORKER_REPLICAS")
    p.add_argument("--replica-gpus", type=float, default=None, help="cluster mode: GPUs per replica (default 1, 0 on a CPU-only cluster); env SDWORKER_REPLICA_GPUS")
    p.add_argument("--replica-cpus", type=float, default=None, help="cluster mode: CPUs per replica (default 1); env SDWORKER_REPLICA_CPUS")
    return p


def _pick(flag: object, env: str, default: object = None) -> object:
    if flag is not None:
        return flag
    value = os.environ.get(env)
    return value if value not in (None, "") else default


def load_settings(argv: list[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
    models = args.models_dir if args.models_dir else _env_list("SDWORKER_MODELS_DIR")
    inputs = args.input_dir if args.input_dir else _env_list("SDWORKER_INPUT_DIR")
    out = _pick(args.output_dir, "SDWORKER_OUTPUT_DIR")
    data = _pick(args.data_dir, "SDWORKER_DATA_DIR")

    def num(flag: object, env: str, default: object, cast: type) -> object:
        value = _pick(flag, env, default)
        return None if value is None else cast(value)

    return Settings(
        models_dirs=[Path(m).expanduser() for m in models],
        output_dir=Path(str(out)).expanduser() if out else None,
        data_dir=Path(str(data)).expanduser() if data else None,
        input_dirs=[Path(m).expanduser() for m in inputs],
        device=_pick(args.device, "SDWORKER_DEVICE"),  # type: ignore[arg-type]
        dtype=str(_pick(args.dtype, "SDWORKER_DTYPE", "auto")),
        default_model=_pick(args.default_model, "SDWORKER_DEFAULT_MODEL"),  # type: ignore[arg-type]
        max_queue=num(args.max_queue, "SDWORKER_MAX_QUEUE", 32, int),  # type: ignore[arg-type]
        max_line_bytes=num(args.max_line_bytes, "SDWORKER_MAX_LINE_BYTES", DEFAULT_MAX_LINE, int),  # type: ignore[arg-type]
        max_json_depth=num(args.max_json_depth, "SDWORKER_MAX_JSON_DEPTH", 64, int),  # type: ignore[arg-type]
        max_batch_size=num(args.max_batch_size, "SDWORKER_MAX_BATCH_SIZE", 8, int),  # type: ignore[arg-type]
        max_resolution=num(args.max_resolution, "SDWORKER_MAX_RESOLUTION", 2048, int),  # type: ignore[arg-type]
        max_steps=num(args.max_steps, "SDWORKER_MAX_STEPS", 150, int),  # type: ignore[arg-type]
        max_prompt_chars=num(args.max_prompt_chars, "SDWORKER_MAX_PROMPT_CHARS", DEFAULT_MAX_PROMPT_CHARS, int),  # type: ignore[arg-type]
        max_image_bytes=num(args.max_image_bytes, "SDWORKER_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES, int),  # type: ignore[arg-type]
        max_image_pixels=num(args.max_image_pixels, "SDWORKER_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS, int),  # type: ignore[arg-type]
        ledger_keep=num(args.ledger_keep, "SDWORKER_LEDGER_KEEP", 10000, int),  # type: ignore[arg-type]
        ledger_days=num(args.ledger_days, "SDWORKER_LEDGER_DAYS", None, float),  # type: ignore[arg-type]
        events_per_second=num(args.events_per_second, "SDWORKER_EVENTS_PER_SECOND", 10.0, float),  # type: ignore[arg-type]
        on_exit=str(_pick(args.on_exit, "SDWORKER_ON_EXIT", "finish")),
        allow_pickle=str(_pick(args.allow_pickle, "SDWORKER_ALLOW_PICKLE", False)).lower() in ("1", "true", "yes"),
        ram_budget_mb=num(args.ram_budget_mb, "SDWORKER_RAM_BUDGET_MB", None, float),  # type: ignore[arg-type]
        vram_budget_mb=num(args.vram_budget_mb, "SDWORKER_VRAM_BUDGET_MB", None, float),  # type: ignore[arg-type]
        log_level=str(_pick(args.log_level, "SDWORKER_LOG_LEVEL", "INFO")).upper(),
        log_format=str(_pick(args.log_format, "SDWORKER_LOG_FORMAT", "text")),
        ray_address=_pick(args.ray_address, "SDWORKER_RAY_ADDRESS"),  # type: ignore[arg-type]
        replicas=num(args.replicas, "SDWORKER_REPLICAS", None, int),  # type: ignore[arg-type]
        replica_gpus=num(args.replica_gpus, "SDWORKER_REPLICA_GPUS", None, float),  # type: ignore[arg-type]
        replica_cpus=num(args.replica_cpus, "SDWORKER_REPLICA_CPUS", 1.0, float),  # type: ignore[arg-type]
    )
