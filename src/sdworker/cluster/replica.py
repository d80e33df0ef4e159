"""A replica: the Ray actor that runs one `python -m sdworker` child on its device and relays its lines.

The worker runs as a child process of the actor, not inside it: a crash in CUDA or a native
library kills the child and never the actor, so the front learns of it at once and Ray restarts
the replica cleanly; the child is exactly the single worker (the same code path, so the same
pixels); and Ray's own threads and prints never touch the worker's protocol pipe. The actor only
moves bytes: lines in through `send`, lines out through `poll` (the front long-polls it).
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from typing import Any

from ..settings import Settings

POLL_BATCH = 256  # most lines one poll returns


def child_argv(settings: Settings, device: str) -> list[str]:
    """The front's worker settings as flags for a replica's child (paths must exist on every node)."""
    s = settings
    argv = ["--device", device, "--dtype", s.dtype]
    for d in s.models_dirs:
        argv += ["--models-dir", str(d)]
    for d in s.input_dirs:
        argv += ["--input-dir", str(d)]
    if s.output_dir is not None:
        argv += ["--output-dir", str(s.output_dir)]
    if s.default_model:
        argv += ["--default-model", s.default_model]
    flags: dict[str, Any] = {
        "--max-queue": s.max_queue, "--max-line-bytes": s.max_line_bytes, "--max-json-depth": s.max_json_depth,
        "--max-batch-size": s.max_batch_size, "--max-resolution": s.max_resolution, "--max-steps": s.max_steps,
        "--max-prompt-chars": s.max_prompt_chars, "--max-image-bytes": s.max_image_bytes,
        "--max-image-pixels": s.max_image_pixels, "--events-per-second": s.events_per_second,
        "--on-exit": s.on_exit, "--ram-budget-mb": s.ram_budget_mb, "--vram-budget-mb": s.vram_budget_mb,
        "--log-level": s.log_level, "--log-format": s.log_format,
        "--ledger-keep": 0,  # the front keeps the one session ledger
    }
    for flag, value in flags.items():
        if value is not None:
            argv += [flag, str(value)]
    if s.allow_pickle:
        argv.append("--allow-pickle")
    return argv


def _die_with_parent() -> None:
    """In the child, before exec: be killed when the actor process dies (Linux), so no orphan runs on."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001  (best effort: without it the child still ends at EOF)
        pass


class Replica:
    """Ray actor (wrapped with ray.remote by the pool). Each (re)start spawns a new child and a new token."""

    def __init__(self, replica_id: int, argv: list[str], env: dict[str, str] | None = None):
        import ray

        self.id = replica_id
        self.token = uuid.uuid4().hex  # names this incarnation: a new one means the old one's jobs are lost
        self.node = ray.get_runtime_context().get_node_id()
        gpus = ray.get_gpu_ids()
        self.device = f"cuda:{gpus[0]}" if gpus else "cpu"  # the node's GPU index; the child sees it as cuda:0
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("SDWORKER_")}  # flags say it all
        child_env.update(env or {})
        child_env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sdworker", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env,
            preexec_fn=_die_with_parent,
        )
        self._lines: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._exited = False
        self._stopping = False
        threading.Thread(target=self._read, name="child-stdout", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    async def poll(self, wait: float) -> tuple[str, list[bytes], int | None]:
        """(token, the child's lines since the last poll, its exit code once it has exited)."""
        lines: list[bytes] = []
        if self._exited:
            return self.token, lines, self.proc.poll()
        try:
            first = await asyncio.to_thread(self._lines.get, True, wait)
        except queue.Empty:
            return self.token, lines, None
        item: bytes | None = first
        while True:
            if item is None:
                self._exited = True
                code = await asyncio.to_thread(self.proc.wait)
                return self.token, lines, code if code is not None else -1
            lines.append(item)
            if len(lines) >= POLL_BATCH:
                return self.token, lines, None
            try:
                item = self._lines.get_nowait()
            except queue.Empty:
                return self.token, lines, None

    async def send(self, data: bytes) -> bool:
        """Write lines to the child. Calls run in the order the front made them (no await inside)."""
        if self._stopping or self.proc.stdin is None:
            return False
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    async def info(self) -> dict[str, Any]:
        return {"id": self.id, "node": self.node, "device": self.device, "pid": os.getpid(), "child_pid": self.proc.pid, "token": self.token}

    async def stop(self, grace: float) -> int | None:
        """EOF to the child (it answers what it owes and exits); killed after `grace` seconds."""
        self._stopping = True
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            return await asyncio.to_thread(self.proc.wait, grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return await asyncio.to_thread(self.proc.wait)
