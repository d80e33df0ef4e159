"""Write the wire schemas to disk: one file per method, the generation request, the envelopes.

    python -m sdworker.export_schemas [DIR]

DIR defaults to the `schemas/` folder of the repository that holds the current directory.
The output is deterministic (sorted keys, 2-space indent, trailing newline), so the committed
folder can be diffed against a fresh export (tests/test_schemas_sync.py does that).

Building the method table constructs `sdworker.app.App` without serving: its constructor
imports no torch and starts no thread, so this runs in well under a second.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

from .protocol.envelope_schema import JSON_SCHEMA_DIALECT, envelopes_schema
from .schemas.generation import GenerationRequest

# ---- files ----------------------------------------------------------------------------------------


def dumps(doc: Any) -> str:
    """The one serialization every exported file uses."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _write(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(doc)
    # Rewrite only on change, so an export over an up-to-date folder touches nothing.
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
    return path


# ---- the method table -----------------------------------------------------------------------------


def method_documents() -> dict[str, dict[str, Any]]:
    """method name -> {method, job, summary, params, result}, from the live registry."""
    from .app import App
    from .settings import Settings

    app = App(Settings(), io.BytesIO())
    docs: dict[str, dict[str, Any]] = {}
    for spec in app.registry.specs():
        described = spec.describe()  # the same schemas system.list_methods sends
        docs[spec.name] = {
            "$schema": JSON_SCHEMA_DIALECT,
            "method": spec.name,
            "job": spec.job,
            "summary": spec.summary,
            "params": described["params_schema"],
            "result": described["result_schema"],
        }
    return docs


# ---- the generation request -----------------------------------------------------------------------


def prompt_submission_schema() -> dict[str, Any]:
    schema = GenerationRequest.model_json_schema()
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["title"] = "sdworker generation request (canonical)"
    schema["description"] = (
        "The canonical request every generation method (inference.text2img, ...) reads: the `data` of a "
        "native request, the `params` of a JSON-RPC request, or the flat fields of a legacy execute_inference. "
        "Three input shapes are accepted and normalized into this one before validation: the flat shape "
        "(these fields, with aliases such as model_name, num_inference_steps, cfg_scale, batch_size), the "
        "nested C# EnhancedSDXLRequest shape (Model{Base, Refiner, Vae}, Scheduler{Type, Steps}, "
        "Hyperparameters{GuidanceScale, Width, Height, Seed, ...}, Conditioning{Prompt, NegativePrompt, ...}), "
        "and a `parameters` bag of any of these fields, merged under the top level (the top level wins). "
        "Keys may be snake_case, camelCase or PascalCase; the worker converts them to snake_case first. "
        "Unknown keys are a validation_error."
    )
    return schema


def example_prompt() -> dict[str, Any]:
    """A realistic native text2img request; tests check its data validates as a GenerationRequest."""
    return {
        "type": "inference.text2img",
        "request_id": "req-example-0001",
        "priority": 0,
        "timeout": 300,
        "data": {
            "session_id": "session-example-0001",
            "model_id": "sdxl-base-1.0",
            "prompt": "a cozy mountain cabin at golden hour, warm light in the windows, snow on the pines, "
            "highly detailed, 35mm photograph",
            "negative_prompt": "blurry, low quality, watermark, text",
            "width": 1024,
            "height": 1024,
            "steps": 30,
            "guidance_scale": 7.0,
            "seed": 42,
            "num_images": 1,
            "preview": False,
            "output": {"format": "png", "quality": 95, "return_base64": True},
        },
    }


# ---- export ---------------------------------------------------------------------------------------


def export_schemas(out_dir: Path) -> list[Path]:
    """Write every schema file under `out_dir`; stale files in out_dir/methods are removed."""
    out_dir = Path(out_dir)
    methods_dir = out_dir / "methods"
    written: list[Path] = []
    docs = method_documents()
    for name, doc in docs.items():
        written.append(_write(methods_dir / f"{name}.json", doc))
    if methods_dir.is_dir():
        keep = {f"{name}.json" for name in docs}
        for stale in sorted(methods_dir.glob("*.json")):
            if stale.name not in keep:
                stale.unlink()
    written.append(_write(out_dir / "prompt_submission_schema.json", prompt_submission_schema()))
    written.append(_write(out_dir / "example_prompt.json", example_prompt()))
    written.append(_write(out_dir / "envelopes.json", envelopes_schema()))
    return written


def default_dir(start: Path | None = None) -> Path:
    """`schemas/` next to the nearest pyproject.toml at or above `start` (default: the cwd)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder / "schemas"
    return here / "schemas"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print("usage: python -m sdworker.export_schemas [DIR]  (default: <repo>/schemas)", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    out_dir = Path(args[0]) if args else default_dir()
    paths = export_schemas(out_dir)
    print(f"wrote {len(paths)} schema files to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
