"""Subcommands that are not the worker loop (they may print to stdout).

Arguments are read before torch is imported, so `--help` and a usage error answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line and exit 2, as the worker's own flags do
        print(f"{self.prog}: error: {message} ({self.prog} --help shows the usage)", file=sys.stderr)
        raise SystemExit(2)


def make_tiny_model_main(argv: list[str]) -> int:
    from .tiny.arches import MODEL_ARCHES, SINGLE_FILE_ARCHES

    p = _Parser(
        prog="sdworker make-tiny-model",
        description="Write a tiny random-weight model (real architecture, tiny config) for tests and demos. No download.",
        epilog=f"ARCH is one of: {', '.join(MODEL_ARCHES)}.",
    )
    p.add_argument("--arch", required=True, choices=list(MODEL_ARCHES), metavar="ARCH", help="the architecture (listed below)")
    p.add_argument("--single-file", action="store_true",
                   help=f"write one original-layout (civitai-style) .safetensors file instead ({', '.join(SINGLE_FILE_ARCHES)} only)")
    p.add_argument("--transformer-file", metavar="FILE", help="also write the folder's transformer alone to FILE (.safetensors or .gguf, Q8_0)")
    p.add_argument("dir", help="output folder (with --single-file: the .safetensors file to write)")
    args = p.parse_args(argv)
    if args.single_file and args.arch not in SINGLE_FILE_ARCHES:
        p.error(f"--single-file is for {', '.join(SINGLE_FILE_ARCHES)}; {args.arch} is written as a folder")

    from .logging_setup import quiet_optional_imports

    quiet_optional_imports()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Writing model shards" bar
    from .tiny import make_tiny_model

    path = make_tiny_model(args.arch, args.dir, single_file=args.single_file)
    print(path)
    if args.transformer_file:
        from .tiny.transformer_file import save_transformer_file

        print(save_transformer_file(path, args.transformer_file))
    return 0
