"""Keep the real stdout for protocol lines only; everything else that writes to fd 1 lands on stderr."""

from __future__ import annotations

import os
import sys
from typing import BinaryIO


def claim_stdout() -> BinaryIO:
    """Duplicate fd 1 for the protocol, then point fd 1 and sys.stdout at stderr.

    Done at the fd level so C extensions, child processes and print() all miss the protocol.
    """
    try:
        sys.stdout.flush()
    except Exception:
        pass
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(proto_fd, "wb", buffering=1 << 16)
