"""The layers of docs/architecture.md hold: import-linter checks the contracts in pyproject.toml.

A break names the import that crossed a wall; fix the import (or the layering), never the contract
to fit it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> list[str]:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("lint-imports is missing: pip install -e '.[test]' (import-linter is in the test extra)")
    return [exe, "--no-cache"]


def test_import_contracts_hold() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([*_lint_imports(), str(ROOT / "pyproject.toml")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_every_contract_is_checked() -> None:
    """The contracts this test stands for are in pyproject.toml (a dropped contract is a dropped wall)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    ids = {c["id"] for c in config["contracts"]}
    assert {"wire-knows-no-ml", "ml-knows-no-wire", "jobs-know-no-ml", "instructors-through-interfaces",
            "families-through-registry", "schemas-stand-alone"} <= ids


def test_a_broken_wall_fails(tmp_path: Path) -> None:
    """The check bites: a copy of the package with one instructor importing a manager is refused."""
    pkg = tmp_path / "src" / "sdworker"
    shutil.copytree(ROOT / "src" / "sdworker", pkg, ignore=shutil.ignore_patterns("__pycache__", "data", "model_configs"))
    system = pkg / "instructors" / "system.py"
    system.write_text(system.read_text(encoding="utf-8") + "\nfrom ..managers import memory  # noqa: E402,F401\n", encoding="utf-8")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    run = subprocess.run([*_lint_imports(), str(tmp_path / "pyproject.toml")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode != 0
    assert "sdworker.instructors.system -> sdworker.managers.memory" in run.stdout
