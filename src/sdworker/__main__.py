"""Entry point. Arguments first (--help and --version print on stdout; a bad value is one line on
stderr and exit 2), then the stdout guard: from there on only protocol lines reach stdout."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "make-tiny-model":
        from .cli_tools import make_tiny_model_main

        return make_tiny_model_main(argv[1:])

    from . import stop_signals

    stop_signals.hold()  # a Ctrl-C or SIGHUP from here on is a clean stop, never a traceback
    from .settings import SettingsError, load_settings, prepare_default_data_dir

    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"sdworker: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help / --version: printed on stdout by argparse
        sys.stdout.flush()
        return int(exc.code or 0)

    from .protocol.stdout_guard import claim_stdout

    out = claim_stdout()
    from .logging_setup import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    problem = prepare_default_data_dir(settings)
    if problem:
        import logging

        logging.getLogger("sdworker").warning(problem)
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
