"""A JSON-RPC 2.0 client for sdworker, newline framing, Python standard library only.

It spawns the worker as a child process and talks JSON-RPC 2.0 over its stdin/stdout, one JSON
text per line, the way a stock client (StreamJsonRpc with a newline-delimited handler,
python-lsp-jsonrpc, ...) would:

- requests with ids (numbers), each answered by `{"jsonrpc":"2.0","id":…,"result"|"error":…}`;
- a notification (no id), which the worker runs and never answers;
- a batch (a JSON array of two requests and a notification), answered by one array of two;
- `inference.text2img` with camelCase params, whose `event.session_status` / `event.progress`
  notifications arrive while it runs and are printed;
- an unknown method, answered with error -32601 and close matches;
- EOF on stdin, after which the worker answers what it owes and exits 0.

Usage:
    python examples/jsonrpc_client.py [--models-dir DIR] [--output-dir DIR] [--model ID] [--steps N]
                                      [--worker CMD ...]

Without --models-dir it writes a tiny random-weight SDXL model to a temporary folder first.
It reads the native ready line too; with `--worker python -m sdworker --protocol jsonrpc` every
line, the ready event included, is JSON-RPC (what a client library that takes every line needs).
Exit status 0 when every request got exactly one well-formed answer, nothing else reached stdout,
and the worker exited 0; 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import queue
import shlex
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

PNG = b"\x89PNG\r\n\x1a\n"


class RpcError(Exception):
    def __init__(self, error: dict[str, Any]):
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.message = error.get("message")
        self.data = error.get("data")


class JsonRpcClient:
    """JSON-RPC 2.0 over a child's stdin/stdout with newline framing."""

    def __init__(self, cmd: list[str], on_notification: Callable[[str, Any], None]):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[str, Future] = {}  # json.dumps(id) -> Future: 7 and "7" are different ids
        self._on_notification = on_notification
        self.ready: queue.Queue[dict[str, Any]] = queue.Queue()
        self.problems: list[str] = []  # stray lines, unmatched or duplicate answers
        self.lines = 0
        self.stderr_tail: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._readers:
            t.start()

    # ---- transport ------------------------------------------------------------------------

    def _send(self, doc: Any) -> None:
        assert self.proc.stdin is not None
        with self._lock:
            self.proc.stdin.write(json.dumps(doc, separators=(",", ":")).encode() + b"\n")
            self.proc.stdin.flush()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + [raw.decode("utf-8", "replace").rstrip()])[-30:]

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines += 1
            try:
                doc = json.loads(raw)
            except ValueError:
                self.problems.append(f"stray stdout line: {raw[:200]!r}")
                continue
            if isinstance(doc, list):  # a batch answer
                for item in doc:
                    self._dispatch(item)
            elif isinstance(doc, dict):
                self._dispatch(doc)
            else:
                self.problems.append(f"stdout line is not an object or array: {raw[:200]!r}")
        eof = EOFError("the worker closed stdout")
        with self._lock:
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            fut.set_exception(eof)

    def _dispatch(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            self.problems.append(f"batch item is not an object: {msg!r}")
            return
        if msg.get("type") == "event" and msg.get("event") == "ready":
            self.ready.put(msg)  # the first line: the native ready event (by default)
            return
        if msg.get("jsonrpc") != "2.0":
            self.problems.append(f"not a JSON-RPC message: {str(msg)[:200]}")
            return
        if msg.get("method") == "event.ready" and "id" not in msg:
            self.ready.put(msg.get("params") or {})  # sdworker --protocol jsonrpc: a notification
            return
        if "method" in msg and "id" not in msg:
            self._on_notification(msg["method"], msg.get("params"))
            return
        with self._lock:
            fut = self._pending.pop(json.dumps(msg.get("id")), None)
        if fut is None:
            self.problems.append(f"answer nobody waits for (unknown or duplicate id): {str(msg)[:200]}")
        elif "error" in msg:
            fut.set_exception(RpcError(msg["error"]))
        else:
            fut.set_result(msg.get("result"))

    # ---- the client API -----------------------------------------------------------------------

    def _request(self, method: str, params: dict[str, Any] | None) -> tuple[dict[str, Any], Future]:
        rid = next(self._ids)
        fut: Future = Future()
        with self._lock:
            self._pending[json.dumps(rid)] = fut
        doc: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            doc["params"] = params
        return doc, fut

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 300) -> Any:
        doc, fut = self._request(method, params)
        self._send(doc)
        return fut.result(timeout)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        doc: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            doc["params"] = params
        self._send(doc)

    def batch(self, calls: list[tuple[str, dict[str, Any] | None, bool]], timeout: float = 300) -> list[Any]:
        """calls: (method, params, is_notification). Returns the results (or RpcErrors) of the requests, in order."""
        docs, futures = [], []
        for method, params, is_notification in calls:
            if is_notification:
                doc: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
                if params is not None:
                    doc["params"] = params
            else:
                doc, fut = self._request(method, params)
                futures.append(fut)
            docs.append(doc)
        self._send(docs)
        out = []
        for fut in futures:
            try:
                out.append(fut.result(timeout))
            except RpcError as exc:
                out.append(exc)
        return out

    def close(self, timeout: float = 120) -> int:
        """EOF on stdin: the worker answers what it owes, then exits."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout)
        for t in self._readers:  # every line the worker wrote is read before we judge
            t.join(10)
        return code


def short(value: Any) -> str:
    """A result for printing: base64 strings are replaced by their length."""

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: (f"<{len(x)} chars of base64>" if k in ("base64", "preview") and isinstance(x, str) else strip(x)) for k, x in v.items()}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    text = json.dumps(strip(value), separators=(",", ":"))
    return text if len(text) <= 400 else text[:400] + "…"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", help="folder with the model (default: a temporary tiny-sdxl)")
    ap.add_argument("--output-dir", help="the worker's output dir (default: a temporary folder)")
    ap.add_argument("--model", default="tiny-sdxl")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--worker", nargs=argparse.REMAINDER, help=f"worker command (default: {sys.executable} -m sdworker)")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="sdworker-jsonrpc-")
    models = Path(args.models_dir) if args.models_dir else Path(tmp.name) / "models"
    if not args.models_dir:
        print(f"making a tiny random-weight SDXL model in {models / 'tiny-sdxl'} …", flush=True)
        subprocess.run([sys.executable, "-m", "sdworker", "make-tiny-model", "--arch", "sdxl", str(models / "tiny-sdxl")],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    outputs = args.output_dir or str(Path(tmp.name) / "outputs")
    cmd = (args.worker or [sys.executable, "-m", "sdworker"]) + ["--models-dir", str(models), "--output-dir", outputs]
    print("$ " + shlex.join(cmd), flush=True)

    notes: list[tuple[str, Any]] = []

    def on_notification(method: str, params: Any) -> None:
        notes.append((method, params))
        d = (params or {}).get("data", {})
        if method == "event.progress":
            print(f"  <- {method} id={params.get('request_id')} step {d.get('step')}/{d.get('total_steps')} ({d.get('percent')}%)", flush=True)
        elif method == "event.session_status":
            print(f"  <- {method} id={params.get('request_id')} {d.get('status')}", flush=True)
        else:
            print(f"  <- {method} {short(params)}", flush=True)

    client = JsonRpcClient(cmd, on_notification)
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)
            print(f"  !! {what}", flush=True)

    try:
        ready = client.ready.get(timeout=120)
        print(f"ready: sdworker {ready['data']['version']}, protocol {ready['data']['protocol']}, pid {ready['data']['pid']}")

        print("-> system.ping (request)")
        pong = client.call("system.ping", {"echo": "hello over JSON-RPC"})
        print("   result", short(pong))
        check(pong.get("pong") is True and pong.get("echo") == "hello over JSON-RPC", "ping result")

        print("-> system.ping (notification: runs, never answered)")
        client.notify("system.ping", {"echo": "no answer expected"})

        print("-> batch: inference.get_supported_types, system.get_info, and a notification")
        results = client.batch([
            ("inference.get_supported_types", None, False),
            ("system.get_info", None, False),
            ("system.ping", None, True),
        ])
        for r in results:
            print("   result", short(r))
        check(len(results) == 2 and not any(isinstance(r, RpcError) for r in results), "batch results")
        check("text2img" in results[0].get("supported_types", []), "text2img in supported_types")

        print("-> system.pong (unknown method)")
        try:
            client.call("system.pong")
            check(False, "an unknown method succeeded")
        except RpcError as exc:
            print(f"   error {exc.code}: {exc.message} (data: {short(exc.data)})")
            check(exc.code == -32601 and (exc.data or {}).get("error_code") == "unknown_method", "unknown method is -32601")

        print(f"-> inference.text2img ({args.model}, 64x64, {args.steps} steps, camelCase params)")
        result = client.call("inference.text2img", {
            "modelId": args.model, "prompt": "a lighthouse on a cliff at dusk", "negativePrompt": "blurry",
            "numInferenceSteps": args.steps, "guidanceScale": 5.0, "width": 64, "height": 64, "seed": 42,
        })
        print("   result", short(result))
        images = result.get("images", [])
        check(len(images) == 1 and images[0].get("seed") == 42, "one image with seed 42")
        check(bool(images) and base64.b64decode(images[0].get("base64", "")).startswith(PNG), "the image is a PNG")
        check(any(m == "event.progress" for m, _ in notes), "event.progress notifications arrived")
    except Exception as exc:  # a timeout, EOF or a malformed answer: say so, still stop the worker
        failures.append(f"{type(exc).__name__}: {exc}")
        print(f"  !! {type(exc).__name__}: {exc}", flush=True)
    finally:
        try:
            code = client.close()
        except subprocess.TimeoutExpired:
            client.proc.kill()
            code = -9

    print(f"worker exited with {code}; {client.lines} stdout lines, {len(notes)} notifications")
    check(code == 0, f"worker exit code {code}")
    for p in client.problems:
        check(False, p)
    tmp.cleanup()
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        if client.stderr_tail:
            print("--- worker stderr (last lines) ---\n" + "\n".join(client.stderr_tail), file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
