"""Worker settings: flags first, SDWORKER_* environment variables as the fallback.

Every flag has its variable (SDWORKER_ and the flag's name in capitals), built from one table so
`--help`, the parser and the variables can never disagree. A bad value, from a flag or from a
variable, is a SettingsError: `__main__` prints it as one line on stderr and exits 2. Nothing here
imports torch: `--help` and `--version` answer at once.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .limits import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_LINE, DEFAULT_MAX_PROMPT_CHARS

#: --data-dir values that keep the database in memory (nothing survives the process).
IN_MEMORY = ("none", ":memory:")
PROTOCOLS = ("native", "jsonrpc")


class SettingsError(Exception):
    """A flag or SDWORKER_* value that cannot be used; the message is the whole line shown."""


@dataclass
class Settings:
    models_dirs: list[Path] = field(default_factory=list)
    output_dir: Path | None = None
    data_dir: Path | None = None  # None: the database lives in memory (load_settings picks a per-user default)
    data_dir_default: bool = False  # data_dir is the per-user default, not asked for
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
    protocol: str = "native"  # jsonrpc: unsolicited messages (ready, events) are JSON-RPC notifications
    # cluster mode (sdworker.cluster): a front over Ray actors, each running one worker
    ray_address: str | None = None  # auto | local | host:port; None: a single worker
    replicas: int | None = None  # None: one per GPU replica slot (GPUs / replica_gpus), else 1
    replica_gpus: float | None = None  # None: 1 when the cluster has GPUs, else 0
    replica_cpus: float = 1.0
    optimize: str | None = None  # default of a request's `optimize`: none, max or a JSON object (managers.optimize)

    def shown(self, database: str) -> dict[str, Any]:
        """The settings system.get_info shows, the single worker's and the cluster front's alike."""
        return {
            "models_dirs": [str(p) for p in self.models_dirs],
            "output_dir": str(self.output_dir) if self.output_dir else None,
            "data_dir": str(self.data_dir) if self.data_dir else None,
            "database": database,  # <data_dir>/sdworker.db, or ":memory:" (not kept) without --data-dir
            "device": self.device,
            "dtype": self.dtype,
            "max_queue": self.max_queue,
            "max_line_bytes": self.max_line_bytes,
            "max_batch_size": self.max_batch_size,
            "max_resolution": self.max_resolution,
            "events_per_second": self.events_per_second,
            "on_exit": self.on_exit,
        }


# ---- value parsers: each raises ValueError with the sentence a user reads -------------------------


def _whole(minimum: int) -> Callable[[str], int]:
    def cast(text: str) -> int:
        try:
            value = int(text.strip().replace("_", ""))
        except ValueError:
            raise ValueError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise ValueError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return cast


def _number(minimum: float, above: bool = False) -> Callable[[str], float]:
    want = f"a number {'>' if above else '>='} {minimum:g}"

    def cast(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected {want}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < minimum or (above and value == minimum):
            raise ValueError(f"expected {want}, got {text!r}")
        return value

    return cast


def _choice(*values: str, fold: Callable[[str], str] = str.lower) -> Callable[[str], str]:
    def cast(text: str) -> str:
        value = fold(text.strip())
        if value not in values:
            raise ValueError(f"expected one of {', '.join(values)}, got {text!r}")
        return value

    return cast


def _switch(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected 1/true/yes/on or 0/false/no/off, got {text!r}")


_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def _device(text: str) -> str:
    value = text.strip().lower()
    if not _DEVICE.match(value):
        raise ValueError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return value


def _text(text: str) -> str:
    return text


def _optimize(text: str) -> str:
    """none, max, or a JSON object of options; its fields are checked as a request's would be."""
    from .schemas.optimize import OptimizeOptions, normalize_optimize

    try:
        value = normalize_optimize(text)
        if value not in ("none", "max"):
            OptimizeOptions.model_validate(value)
    except ValueError as exc:  # pydantic's ValidationError and json's JSONDecodeError are ValueErrors
        raise ValueError(f"expected none, max or a JSON object of optimize options, got {text!r} ({str(exc).splitlines()[0]})") from None
    return text.strip()


@dataclass(frozen=True)
class Option:
    """One flag, its SDWORKER_* variable and the Settings field it sets."""

    flag: str
    dest: str
    cast: Callable[[str], Any]
    help: str
    repeat: bool = False  # the flag may repeat; the variable holds an os.pathsep-separated list
    switch: bool = False  # a flag without a value
    metavar: str | None = None

    @property
    def env(self) -> str:
        return "SDWORKER_" + self.flag[2:].upper().replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("--models-dir", "models_dirs", _text, "folder of models (repeatable; the variable is a path list)", repeat=True, metavar="DIR"),
    Option("--output-dir", "output_dir", _text, "where images are saved", metavar="DIR"),
    Option("--data-dir", "data_dir", _text,
           "presets database and session ledger (default: the per-user data folder, e.g. ~/.local/share/sdworker; "
           "'none' keeps them in memory, lost at exit)", metavar="DIR"),
    Option("--input-dir", "input_dirs", _text, "extra root input images may be read from (repeatable)", repeat=True, metavar="DIR"),
    Option("--device", "device", _device, "cpu, cuda or cuda:N (default: cuda if available)", metavar="DEVICE"),
    Option("--dtype", "dtype", _choice("auto", "fp32", "fp16", "bf16"), "weights dtype (default auto: fp16 on cuda, fp32 on cpu)", metavar="auto|fp32|fp16|bf16"),
    Option("--default-model", "default_model", _text, "model_id used when a request names none", metavar="ID"),
    Option("--max-queue", "max_queue", _whole(1), "jobs waiting before new ones get 'busy' (default 32)", metavar="N"),
    Option("--max-line-bytes", "max_line_bytes", _whole(1), "longest accepted input line (default 64 MiB)", metavar="N"),
    Option("--max-json-depth", "max_json_depth", _whole(1), "deepest accepted JSON nesting (default 64)", metavar="N"),
    Option("--max-batch-size", "max_batch_size", _whole(1), "most images per request (default 8)", metavar="N"),
    Option("--max-resolution", "max_resolution", _whole(1), "largest width or height (default 2048)", metavar="PX"),
    Option("--max-steps", "max_steps", _whole(1), "most denoising steps per request (default 150)", metavar="N"),
    Option("--max-prompt-chars", "max_prompt_chars", _whole(1), "longest prompt or negative_prompt (default 10000)", metavar="N"),
    Option("--max-image-bytes", "max_image_bytes", _whole(1), "largest input image, decoded bytes (default 50 MiB)", metavar="N"),
    Option("--max-image-pixels", "max_image_pixels", _whole(1), "most pixels in an input image (default 64 Mpx)", metavar="N"),
    Option("--ledger-keep", "ledger_keep", _whole(0), "finished sessions kept in the ledger (default 10000; 0: none)", metavar="N"),
    Option("--ledger-days", "ledger_days", _number(0, above=True), "also drop finished sessions older than this many days", metavar="DAYS"),
    Option("--events-per-second", "events_per_second", _number(0), "progress events per session per second (default 10; 0: no limit)", metavar="N"),
    Option("--on-exit", "on_exit", _choice("finish", "cancel"), "at shutdown, let the running job finish (default) or cancel it", metavar="finish|cancel"),
    Option("--allow-pickle", "allow_pickle", _switch, "also load pickle files: .ckpt/.pt/.pth/.bin (torch.load weights_only); variable: 1 or 0", switch=True),
    Option("--ram-budget-mb", "ram_budget_mb", _number(0), "RAM cache budget (default: total RAM less 4 GiB)", metavar="MB"),
    Option("--vram-budget-mb", "vram_budget_mb", _number(0), "VRAM cache budget (default: free VRAM less 1.5 GiB)", metavar="MB"),
    Option("--optimize", "optimize", _optimize, "default speed options of requests: none, max or a JSON object (default none)", metavar="none|max|JSON"),
    Option("--log-level", "log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", fold=str.upper), "DEBUG, INFO, WARNING, ERROR (default INFO)", metavar="LEVEL"),
    Option("--log-format", "log_format", _choice("text", "json"), "stderr log format: text or json lines (default text)", metavar="text|json"),
    Option("--protocol", "protocol", _choice(*PROTOCOLS),
           "native (default) or jsonrpc: ready and every event are JSON-RPC notifications, and "
           "$/cancelRequest cancels a request's job, so a stock JSON-RPC client reads every line", metavar="native|jsonrpc"),
    Option("--ray-address", "ray_address", _text, "cluster mode: auto, local or HOST:PORT of a Ray cluster", metavar="ADDR"),
    Option("--replicas", "replicas", _whole(1), "cluster mode: worker replicas (default: one per GPU)", metavar="N"),
    Option("--replica-gpus", "replica_gpus", _number(0), "cluster mode: GPUs per replica (default 1, 0 on a CPU-only cluster)", metavar="G"),
    Option("--replica-cpus", "replica_cpus", _number(0, above=True), "cluster mode: CPUs per replica (default 1)", metavar="C"),
)

#: Variables that are not flags (fault drills for tests); listed in --help and the README too.
OTHER_VARIABLES: tuple[tuple[str, str], ...] = (
    ("SDWORKER_FAULT_OOM_AT_STEP", "N[:K] - tests only: raise a CUDA-style out-of-memory error at denoising step N (K times)"),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse prints usage and exits; we raise one line instead
        raise SettingsError(f"{message} (sdworker --help lists the flags)")


def _typed(opt: Option) -> Callable[[str], Any]:
    def cast(text: str) -> Any:
        try:
            return opt.cast(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    cast.__name__ = opt.dest
    return cast


def build_parser() -> argparse.ArgumentParser:
    env_lines = "\n".join(f"  {o.env:<28} {o.flag}" for o in OPTIONS)
    other = "\n".join(f"  {name:<28} {text}" for name, text in OTHER_VARIABLES)
    p = _Parser(
        prog="sdworker",
        description="Headless diffusion worker: JSON lines on stdin, JSON lines on stdout, logs on stderr.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Every flag falls back to its environment variable when not given:\n"
            f"{env_lines}\n{other}\n\n"
            "Subcommand: 'sdworker make-tiny-model --arch ARCH DIR' writes a tiny random-weight model\n"
            "('sdworker make-tiny-model --help' lists the arches)."
        ),
    )
    p.add_argument("--version", action="version", version=f"sdworker {__version__}")
    for o in OPTIONS:
        text = f"{o.help}; env {o.env}"
        if o.switch:
            p.add_argument(o.flag, dest=o.dest, action="store_true", default=None, help=text)
        else:
            p.add_argument(o.flag, dest=o.dest, type=_typed(o), default=None, metavar=o.metavar,
                           action="append" if o.repeat else "store", help=text)
    return p


def default_data_dir() -> Path | None:
    """The per-user data folder a user expects (XDG on Linux, LOCALAPPDATA, Application Support)."""
    try:
        if sys.platform == "win32":
            base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
            return Path(base) / "sdworker"
        if sys.platform == "darwin":
            return Path.home() / "Library" / "Application Support" / "sdworker"
        xdg = os.environ.get("XDG_DATA_HOME", "")
        base_dir = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
        return base_dir / "sdworker"
    except RuntimeError:  # no home directory can be determined
        return None


def _from_env(o: Option) -> Any:
    raw = os.environ.get(o.env)
    if raw is None or raw == "":
        return None
    try:
        if o.repeat:
            return [o.cast(part) for part in raw.split(os.pathsep) if part] or None
        return o.cast(raw)
    except ValueError as exc:
        raise SettingsError(f"{o.env}={raw!r}: {exc} (sdworker --help lists the variables)") from None


def load_settings(argv: list[str] | None = None) -> Settings:
    """Settings from flags, then SDWORKER_* variables, then the defaults; SettingsError when a value is bad."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for o in OPTIONS:
        value = getattr(args, o.dest)
        values[o.dest] = value if value is not None else _from_env(o)
    s = Settings(**{k: v for k, v in values.items() if v is not None and k != "data_dir"})
    s.models_dirs = [Path(m).expanduser() for m in values["models_dirs"] or []]
    s.input_dirs = [Path(m).expanduser() for m in values["input_dirs"] or []]
    s.output_dir = Path(values["output_dir"]).expanduser() if values["output_dir"] else None
    data = values["data_dir"]
    if data is None:
        s.data_dir, s.data_dir_default = default_data_dir(), True
    elif not data.strip() or data.strip().lower() in IN_MEMORY:  # an empty flag too (an empty variable is unset)
        s.data_dir = None
    else:
        s.data_dir = Path(data).expanduser()
    return s


def prepare_default_data_dir(s: Settings) -> str | None:
    """Create the per-user data folder; when that fails, keep the database in memory and say why."""
    if not s.data_dir_default or s.data_dir is None:
        return None
    try:
        s.data_dir.mkdir(parents=True, exist_ok=True)
        return None
    except OSError as exc:
        where, s.data_dir = s.data_dir, None
        return f"cannot create the default data dir {where} ({exc}); presets and the session ledger stay in memory: pass --data-dir DIR"
