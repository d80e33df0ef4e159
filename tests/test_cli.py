"""The command line as a user meets it, through the real process: --version, --help, bad flags and
bad SDWORKER_* values (one line on stderr, exit 2, never a traceback), make-tiny-model's help,
and the per-user default --data-dir."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Worker

SRC = ROOT / "src" / "sdworker"
VARIABLE = re.compile(r"SDWORKER_[A-Z][A-Z0-9_]*")


def sdworker(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "sdworker", *args], input=stdin, capture_output=True, text=True, env=full, timeout=300)


def variables_in_source() -> set[str]:
    """Every SDWORKER_* name the package reads: the flags' variables and any named in the code."""
    from sdworker.settings import OPTIONS

    found: set[str] = {o.env for o in OPTIONS}
    for path in SRC.rglob("*.py"):
        found |= set(VARIABLE.findall(path.read_text(encoding="utf-8")))
    return found


def test_version_on_stdout() -> None:
    from sdworker import __version__

    r = sdworker("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"sdworker {__version__}"
    assert "Traceback" not in r.stderr


def test_help_on_stdout_lists_every_variable() -> None:
    r = sdworker("--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: sdworker")
    names = variables_in_source()
    assert len(names) >= 27, names  # every flag's variable, SDWORKER_PROTOCOL and the fault drill
    missing = sorted(n for n in names if n not in r.stdout)
    assert not missing, f"not in --help: {missing}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = sorted(n for n in names if n not in readme)
    assert not missing, f"not in README.md: {missing}"


@pytest.mark.parametrize(
    "args",
    [
        ["--no-such-flag"],
        ["--max-queue", "many"],
        ["--max-queue", "0"],
        ["--max-resolution"],
        ["--dtype", "fp8"],
        ["--device", "gpu9"],
        ["--protocol", "xml"],
        ["--log-level", "loud"],
        ["--ledger-days", "-1"],
        ["stray-positional"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_flag_is_one_line_and_exit_2(args: list[str]) -> None:
    r = sdworker(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdworker: error:"), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize(
    "name, value",
    [
        ("SDWORKER_MAX_QUEUE", "abc"),
        ("SDWORKER_MAX_LINE_BYTES", "-5"),
        ("SDWORKER_EVENTS_PER_SECOND", "fast"),
        ("SDWORKER_RAM_BUDGET_MB", "nan"),
        ("SDWORKER_ON_EXIT", "explode"),
        ("SDWORKER_ALLOW_PICKLE", "maybe"),
        ("SDWORKER_PROTOCOL", "grpc"),
        ("SDWORKER_LOG_FORMAT", "xml"),
        ("SDWORKER_DEVICE", "tpu"),
    ],
)
def test_bad_variable_is_one_line_naming_it_and_exit_2(name: str, value: str) -> None:
    r = sdworker(env={name: value})
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and repr(value) in lines[0], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_flag_beats_a_bad_variable() -> None:
    """The variable is only a fallback: a flag given makes it unread."""
    r = sdworker("--max-queue", "3", "--data-dir", "none", env={"SDWORKER_MAX_QUEUE": "abc"})
    assert r.returncode == 0, r.stderr  # EOF on stdin at once: a clean exit


def test_make_tiny_model_help_lists_every_arch_without_torch() -> None:
    from sdworker.tiny.arches import MODEL_ARCHES

    code = (
        "import sys\n"
        "from sdworker.__main__ import main\n"
        "try:\n"
        "    main(['make-tiny-model', '--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage: sdworker make-tiny-model" in r.stdout
    listed = r.stdout.replace("\n", " ")
    for arch in MODEL_ARCHES:
        assert re.search(rf"(?<![\w-]){re.escape(arch)}(?![\w-])", listed), arch
    bad = sdworker("make-tiny-model", "--arch", "sd9", "x")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


# ---- the per-user data folder ----------------------------------------------------------------------


def _info(w: Worker) -> dict:
    r = w.call("system.get_info")
    assert r["success"], r
    return r["data"]["settings"]


def test_default_data_dir_is_the_per_user_folder_and_keeps_presets(tmp_path: Path) -> None:
    env = {"SDWORKER_DATA_DIR": "", "XDG_DATA_HOME": str(tmp_path / "xdg")}  # "": not set
    w = Worker([], env=env)
    try:
        settings = _info(w)
        assert settings["data_dir"] == str(tmp_path / "xdg" / "sdworker")
        assert settings["database"] == str(tmp_path / "xdg" / "sdworker" / "sdworker.db")
        made = w.call("config.create", {"model_id": "m", "base_model": "sdxl", "configuration_type": "speed", "steps": 4, "cfg_scale": 1})
        assert made["success"], made
    finally:
        w.kill()  # no clean exit: what was answered is on disk
    w = Worker([], env=env)
    try:
        got = w.call("config.get", {"id": made["data"]["id"]})
        assert got["success"] and got["data"]["steps"] == 4, got
    finally:
        assert w.close() == 0


@pytest.mark.parametrize("value", ["none", ":memory:", "NONE", ""])
def test_data_dir_none_keeps_the_database_in_memory(tmp_path: Path, value: str) -> None:
    w = Worker(["--data-dir", value], env={"XDG_DATA_HOME": str(tmp_path / "xdg")})
    try:
        settings = _info(w)
        assert settings["data_dir"] is None and settings["database"] == ":memory:"
    finally:
        assert w.close() == 0
    assert not (tmp_path / "xdg").exists()


def test_unusable_default_data_dir_falls_back_to_memory_with_a_warning(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data folder's parent should be")
    w = Worker([], env={"SDWORKER_DATA_DIR": "", "XDG_DATA_HOME": str(blocker)})
    try:
        assert _info(w)["data_dir"] is None
    finally:
        assert w.close() == 0
    assert "cannot create the default data dir" in w.stderr()


# ---- quiet starts ------------------------------------------------------------------------------------

#: Lines optional packages (torchao with the test or quant extra) log at import: harmless, alarming.
IMPORT_NOISE = ("Failed to load", "Detected no triton", "is an Enum subclass", "Unable to import `torchao`", "requires torchvision")


def test_worker_and_make_tiny_model_start_quietly(models_dir: Path, tmp_path: Path) -> None:
    """A model load imports diffusers (and torchao, when installed): nothing alarming on stderr at INFO."""
    w = Worker(["--models-dir", str(models_dir), "--log-level", "INFO"])
    try:
        r = w.call("inference.text2img", {"model_id": "tiny-sd15", "prompt": "quiet", "steps": 2, "width": 64, "height": 64}, timeout=300)
        assert r["success"], r
    finally:
        assert w.close() == 0
    err = w.stderr()
    assert "runtime ready" in err  # the log is there, only the noise is not
    assert not [n for n in IMPORT_NOISE if n in err], err[-3000:]
    made = sdworker("make-tiny-model", "--arch", "sd15", str(tmp_path / "m"))
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == str(tmp_path / "m")
    assert not [n for n in IMPORT_NOISE if n in made.stderr], made.stderr[-3000:]
