"""The README demo: make a tiny model if none is configured, pipe examples/text2img.jsonl through the
worker as a host would, show progress on the terminal, and say where the image was written."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    env_models = os.environ.get("SDWORKER_MODELS_DIR")
    models = Path(env_models.split(os.pathsep)[0]) if env_models else ROOT / "models"
    outputs = Path(os.environ.get("SDWORKER_OUTPUT_DIR") or ROOT / "outputs")
    if not (models / "tiny-sdxl" / "model_index.json").is_file():
        print(f"making a tiny random-weight SDXL model in {models / 'tiny-sdxl'} …", flush=True)
        subprocess.run([sys.executable, "-m", "sdworker", "make-tiny-model", "--arch", "sdxl", str(models / "tiny-sdxl")], check=True, stdout=subprocess.DEVNULL)
    requests = (ROOT / "examples" / "text2img.jsonl").read_bytes()
    cmd = [sys.executable, "-m", "sdworker", "--models-dir", str(models), "--output-dir", str(outputs), "--log-level", "WARNING"]
    print("$ " + " ".join(cmd) + " < examples/text2img.jsonl", flush=True)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin and proc.stdout
    proc.stdin.write(requests)
    proc.stdin.close()  # EOF: the worker finishes what it was sent, then exits 0
    failed = 0
    for line in proc.stdout:
        msg = orjson.loads(line)
        if msg.get("event") == "ready":
            print(f"ready: sdworker {msg['data']['version']} (pid {msg['data']['pid']})")
        elif msg.get("event") == "progress":
            d = msg["data"]
            bar = "#" * int(d["percent"] / 5)
            print(f"\r{msg['request_id']}: [{bar:<20}] step {d['step']}/{d['total_steps']}", end="", flush=True)
        elif msg.get("event") == "session_status":
            if msg["data"]["status"] in ("postprocessing",):
                print()
        elif msg.get("type") == "response":
            if not msg["success"]:
                failed += 1
                print(f"{msg['request_id']}: {msg['error_code']}: {msg['error']}")
                continue
            data = msg["data"]
            for im in data.get("images", []):
                where = im.get("path")
                if where is None:
                    where = str(outputs / f"{msg['request_id']}-{im['index']}.png")
                    Path(where).parent.mkdir(parents=True, exist_ok=True)
                    Path(where).write_bytes(base64.b64decode(im["base64"]))
                print(f"{msg['request_id']}: {im['width']}x{im['height']} seed {im['seed']} "
                      f"in {data['performance']['total_ms']:.0f} ms -> {where}")
            if "pong" in data:
                print(f"{msg['request_id']}: pong")
    code = proc.wait()
    print(f"worker exited with {code}")
    return 1 if code or failed else 0


if __name__ == "__main__":
    sys.exit(main())
