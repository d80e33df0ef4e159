"""Line framing: one JSON object per line in, one per line out, nothing else on the wire."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import orjson

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_LINE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Oversize:
    """A line longer than the limit; its bytes were dropped, only the count is kept."""

    size: int
    head: bytes  # the first bytes, so the error can still guess the envelope form and id


def read_lines(stream: BinaryIO, max_line: int = DEFAULT_MAX_LINE) -> Iterator[bytes | Oversize]:
    """Yield non-blank lines without their line ends (LF or CRLF) and without a UTF-8 BOM.

    A line longer than `max_line` bytes is consumed in bounded pieces and yielded as Oversize,
    so a runaway host cannot make the worker hold it in memory.
    """
    while True:
        line = stream.readline(max_line + 1)
        if not line:
            return
        if len(line) > max_line and not line.endswith(b"\n"):
            size, head = len(line), line[:512]
            while True:
                rest = stream.readline(1 << 20)
                size += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            yield Oversize(size=size, head=head)
            continue
        line = line.rstrip(b"\r\n")
        if line.startswith(BOM):
            line = line[len(BOM):]
        if line.strip():
            yield line


class LineWriter:
    """The only writer of protocol stdout: one lock, one line per message, flushed each time."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._lock = threading.Lock()
        self.closed = False
        self.lines_written = 0

    def write(self, message: object) -> bool:
        data = orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY, default=str)
        with self._lock:
            if self.closed:
                return False
            try:
                self._stream.write(data + b"\n")
                self._stream.flush()
            except (BrokenPipeError, OSError, ValueError) as exc:
                # The host went away; keep running so the job can finish and the ledger is right.
                self.closed = True
                log.warning("protocol stdout closed: %s", exc)
                return False
            self.lines_written += 1
            return True
