"""Runs the real worker while a 'library' thread prints to stdout every way it can (for the purity test)."""

import ctypes
import logging
import os
import sys
import threading
import time
import warnings


def noise() -> None:
    time.sleep(0.3)
    libc = ctypes.CDLL(None)
    for i in range(20):
        print(f"stray print {i}")
        sys.stdout.write("stray sys.stdout.write\n")
        sys.stdout.flush()
        os.write(1, b"stray fd-1 write\n")
        libc.puts(b"stray libc puts")
        libc.fflush(None)
        warnings.warn("stray warning", stacklevel=1)
        logging.getLogger("somelib").warning("stray log")
        time.sleep(0.05)


threading.Thread(target=noise, daemon=True).start()
from sdworker.__main__ import main  # noqa: E402

main(sys.argv[1:])
