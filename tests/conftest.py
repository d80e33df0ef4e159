"""Shared fixtures: tiny models built once, and a real worker process driven like a host drives it."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, ClassVar

import orjson
import pytest
from wire_shapes import ResultChecker

ROOT = Path(__file__).resolve().parents[1]

# A worker started without --data-dir keeps its database in the per-user data folder. Tests never
# write into the real home: workers they start keep it in memory, as each test expects a fresh
# worker to (tests of the default itself set SDWORKER_DATA_DIR / XDG_DATA_HOME for their worker),
# and the data folder itself points into a temporary directory in case a test unsets that.
os.environ["SDWORKER_DATA_DIR"] = ":memory:"
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="sdworker-test-xdg-")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sdworker.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("models")
    make_tiny_model("sdxl", root / "tiny-sdxl")
    make_tiny_model("sd15", root / "tiny-sd15")
    return root


def decode_png(b64: str) -> Any:
    """A base64 image from a response as an RGB uint8 array (numpy)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def png_b64(img: Any) -> str:
    """A PIL image as the base64 PNG a host sends (init_image, mask_image, control images)."""
    import base64
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def cpu_gens(seed: int, n: int = 1) -> list[Any]:
    """The contract's generators: image i from a CPU generator seeded seed + i."""
    import torch

    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


def assert_batch_noise_per_image(pipe: Any, channels: int, side: int, n: int, seed: int = 500) -> None:
    """Image i of a batched call seeded `seed` starts from the noise of a one-image call seeded
    seed + i (contract section 6: compare noise, not pixels, across batch sizes)."""
    import torch

    from sdworker.managers.denoise import generators

    def latents(batch: int, first: int) -> Any:
        out = pipe.prepare_latents(batch, channels, side, side, torch.float32, torch.device("cpu"), generators(torch, first, batch))
        return out[0] if isinstance(out, tuple) else out  # Flux also returns the latent image ids

    batched = latents(n, seed)
    for i in range(n):
        assert torch.equal(batched[i], latents(1, seed + i)[0]), f"image {i}"


def tiny_models_dir(factory: pytest.TempPathFactory, tag: str, models: dict[str, str]) -> Path:
    """A fresh models dir holding `models` (folder name -> make-tiny-model arch) only."""
    from sdworker.tiny import make_tiny_model

    root = factory.mktemp(f"{tag}-models")
    for name, arch in models.items():
        make_tiny_model(arch, root / name)
    return root


def family_worker(models_dir: Path, factory: pytest.TempPathFactory, tag: str, out_dir: Path | None = None) -> "Worker":
    """A worker over `models_dir` with its own output and data dirs (a test module's shared worker)."""
    out = out_dir or factory.mktemp(f"{tag}-out")
    return Worker(["--models-dir", str(models_dir), "--output-dir", str(out), "--data-dir", str(factory.mktemp(f"{tag}-data"))])


def load_pipes(root: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """Plain diffusers pipelines of tiny model folders, for reference results."""
    from diffusers import DiffusionPipeline

    out = {}
    for name in names:
        pipe = DiffusionPipeline.from_pretrained(str(root / name), local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        out[name] = pipe
    return out


@pytest.fixture(scope="module")
def pipes(models_dir: Path) -> dict[str, Any]:
    """Plain diffusers pipelines of the shared tiny models (tiny-sd15, tiny-sdxl), for reference results."""
    from diffusers import DiffusionPipeline

    loaded = {}
    for name in ("tiny-sd15", "tiny-sdxl"):
        kwargs = {"safety_checker": None, "requires_safety_checker": False} if name == "tiny-sd15" else {}
        pipe = DiffusionPipeline.from_pretrained(str(models_dir / name), **kwargs)
        pipe.set_progress_bar_config(disable=True)
        loaded[name] = pipe
    return loaded


class Worker:
    """A spawned `python -m sdworker`: write lines to stdin, read every stdout line (kept raw).

    Every success it reads is checked against the method's committed result schema (wire_shapes.py);
    a mismatch fails the test that drove this worker."""

    live: ClassVar[list[Worker]] = []  # the workers started so far, whose schema problems each test's teardown reports

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cmd: list[str] | None = None, cwd: Path | None = None):
        self.shapes = ResultChecker()
        Worker.live.append(self)
        self.stderr_path = Path(os.environ.get("PYTEST_TMP", "/tmp")) / f"sdworker-stderr-{os.getpid()}-{time.monotonic_ns()}.log"
        self._stderr = open(self.stderr_path, "wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            (cmd or [sys.executable, "-m", "sdworker"]) + args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=full_env,
            cwd=cwd,
        )
        self.raw: list[bytes] = []
        self._q: queue.Queue[dict[str, Any] | list[Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.pending: list[Any] = []  # messages read but not yet consumed by a wait
        self.ready = self.wait_for(lambda m: isinstance(m, dict) and m.get("event") == "ready", timeout=30)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                self._q.put({"__not_json__": line.decode("utf-8", "replace")})
                continue
            self.shapes.read(doc)
            self._q.put(doc)
        self._q.put(None)

    def send(self, message: Any) -> None:
        data = message if isinstance(message, bytes) else orjson.dumps(message) + b"\n"
        self.shapes.sent(message)
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def _next(self, timeout: float) -> Any:
        msg = self._q.get(timeout=timeout)
        if msg is None:
            raise EOFError("worker closed stdout")
        return msg

    def assert_shapes(self) -> None:
        """Fail with every result read so far that its method's schema refuses."""
        problems = self.shapes.take_problems()
        assert not problems, "a response does not match its exported schema:\n" + "\n".join(problems)

    def wait_for(self, pred: Callable[[Any], bool], timeout: float = 60) -> Any:
        self.assert_shapes()
        for i, m in enumerate(self.pending):
            if pred(m):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching message within {timeout}s; pending: {self.pending[-5:]}")
            msg = self._next(left)
            if pred(msg):
                self.assert_shapes()
                return msg
            self.pending.append(msg)

    def response(self, request_id: str, timeout: float = 60) -> dict[str, Any]:
        return self.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "response" and m.get("request_id") == request_id, timeout)

    def call(self, method: str, data: dict[str, Any] | None = None, request_id: str | None = None, timeout: float = 60, **extra: Any) -> dict[str, Any]:
        rid = request_id or f"t-{time.monotonic_ns()}"
        self.send({"type": method, "request_id": rid, "data": data or {}, **extra})
        return self.response(rid, timeout)

    def events(self, session_id: str, event: str | None = None) -> list[dict[str, Any]]:
        """Events for a session seen so far (taken from pending, in order)."""
        out = [
            m for m in self.pending
            if isinstance(m, dict) and m.get("type") == "event" and m.get("session_id") == session_id and (event is None or m.get("event") == event)
        ]
        return out

    def drain(self, seconds: float = 0.2) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                msg = self._q.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            if msg is None:
                break
            self.pending.append(msg)

    def close(self, timeout: float = 60) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(5)
        while True:
            try:
                msg = self._q.get_nowait()
            except queue.Empty:
                break
            if msg is not None:
                self.pending.append(msg)
        self._stderr.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr.close()

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def assert_pure_stdout(self) -> None:
        for line in self.raw:
            assert line.endswith(b"\n"), line
            doc = orjson.loads(line)
            assert isinstance(doc, (dict, list)), line


@pytest.fixture
def spawn(models_dir: Path, tmp_path: Path):
    """Start workers with extra flags; each is killed at teardown if still running."""
    started: list[Worker] = []

    def start(*flags: str, env: dict[str, str] | None = None, cmd: list[str] | None = None) -> Worker:
        args = ["--models-dir", str(models_dir), "--output-dir", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data"), *flags]
        w = Worker(args, env=env, cmd=cmd)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


@pytest.fixture(scope="module")
def worker(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One worker shared by a module's tests that do not need a fresh process."""
    out = tmp_path_factory.mktemp("out")
    w = Worker(["--models-dir", str(models_dir), "--output-dir", str(out), "--max-line-bytes", "65536"])
    yield w
    w.kill()


@pytest.fixture(autouse=True)
def _responses_match_their_schemas() -> Any:
    """After each test: every result any worker produced during it matched its method's result schema."""
    yield
    problems = [p for w in Worker.live for p in w.shapes.take_problems()]
    Worker.live[:] = [w for w in Worker.live if w.proc.poll() is None]
    assert not problems, "a response does not match its exported schema:\n" + "\n".join(problems)


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked gpu skip cleanly on machines without CUDA (CI has none)."""
    if any(item.get_closest_marker("gpu") for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)
