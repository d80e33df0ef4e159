"""Subcommands that are not the worker loop (they may print to stdout)."""

from __future__ import annotations

import argparse


def make_tiny_model_main(argv: list[str]) -> int:
    from .tiny import MODEL_ARCHES, make_tiny_model

    p = argparse.ArgumentParser(prog="sdworker make-tiny-model", description="Write a tiny random-weight model (real architecture) for tests and demos.")
    p.add_argument("--arch", required=True, choices=list(MODEL_ARCHES))
    p.add_argument("--single-file", action="store_true", help="original single-file key layout")
    p.add_argument("--transformer-file", metavar="FILE", help="also write the folder's transformer alone to FILE (.safetensors or .gguf, Q8_0)")
    p.add_argument("dir", help="output folder (with --single-file: the .safetensors file to write)")
    args = p.parse_args(argv)
    path = make_tiny_model(args.arch, args.dir, single_file=args.single_file)
    print(path)
    if args.transformer_file:
        from .tiny.transformer_file import save_transformer_file

        print(save_transformer_file(path, args.transformer_file))
    return 0
