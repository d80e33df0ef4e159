"""Entry point. The stdout guard comes first: from here on only protocol lines reach stdout."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "make-tiny-model":
        from .cli_tools import make_tiny_model_main

        return make_tiny_model_main(argv[1:])

    from .protocol.stdout_guard import claim_stdout

    out = claim_stdout()
    from .logging_setup import setup_logging
    from .settings import load_settings

    settings = load_settings(argv)
    setup_logging(settings.log_level, settings.log_format)
    if settings.ray_address:  # cluster mode: the same protocol, jobs run on Ray replicas
        from .cluster import run as run_cluster

        code = run_cluster(settings, out)
    else:
        from .app import run

        code = run(settings, out)
    sys.stderr.flush()
    # Skip interpreter teardown: library threads (torch, tokenizers) can stall it, and all is answered.
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
