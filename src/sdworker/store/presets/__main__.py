"""Command line: ``python -m sdworker.store.presets import|export --data-dir DIR [FILE]``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ...atomic import write_text_atomic
from ...errors import WorkerError
from ..db import Database
from .store import PresetStore


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ..db import DB_FILE

    p = argparse.ArgumentParser(prog="python -m sdworker.store.presets", description="Import or export the presets collection (mongoexport JSON lines).")
    p.add_argument("action", choices=["import", "export"])
    p.add_argument("file", nargs="?", help="import: the file to read ('-' or absent: stdin); export: the file to write (absent: stdout)")
    p.add_argument("--data-dir", default=os.environ.get("SDWORKER_DATA_DIR"), help="the worker's --data-dir (env SDWORKER_DATA_DIR)")
    p.add_argument("--on-conflict", choices=["error", "skip", "replace"], default="error")
    args = p.parse_intermixed_args(argv)
    if not args.data_dir:
        p.error("--data-dir is required")
    store = PresetStore(Database(Path(args.data_dir).expanduser() / DB_FILE))
    try:
        if args.action == "import":
            text = sys.stdin.read() if args.file in (None, "-") else Path(args.file).read_text(encoding="utf-8")
            print(json.dumps(store.import_jsonl(text, args.on_conflict, field="file")), file=sys.stderr)
        else:
            out = store.export_jsonl()
            if args.file:
                write_text_atomic(Path(args.file), out)
            else:
                sys.stdout.write(out)
    except WorkerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        for d in exc.details[:20]:
            print(f"  {d.get('path')}: {d.get('message')}", file=sys.stderr)
        return 1
    finally:
        store.db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
