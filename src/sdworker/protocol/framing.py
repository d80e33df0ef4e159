"""Line framing: one JSON object per line in, one per line out, nothing else on the wire."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

import orjson

from ..limits import DEFAULT_MAX_LINE

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Oversize:
    """A line longer than the limit; its bytes were dropped, only the count is kept."""

    size: int
    head: bytes  # the first bytes, so the error can still guess the envelope form and id


#: Bytes asked of the input per read: many pipelined lines arrive in one read.
CHUNK = 1 << 16


def read_lines(
    stream: BinaryIO, max_line: int = DEFAULT_MAX_LINE, on_wait: Callable[[], None] | None = None
) -> Iterator[bytes | Oversize]:
    """Yield non-blank lines without their line ends (LF or CRLF) and without a UTF-8 BOM.

    A line longer than `max_line` bytes is consumed in bounded pieces and yielded as Oversize,
    so a runaway host cannot make the worker hold it in memory. `on_wait` runs each time every
    complete line read so far has been yielded, right before a read that may block: the writer
    flushes there, so answers to pipelined lines leave in one write instead of one per line.
    """
    read = getattr(stream, "read1", None) or stream.read
    buf = bytearray()
    dropping: list[int] | None = None  # [bytes so far] of an oversize line whose end is not read yet
    head = b""
    while True:
        if on_wait is not None:
            on_wait()
        chunk = read(CHUNK)
        if not chunk:
            break
        if dropping is not None:
            nl = chunk.find(b"\n")
            if nl < 0:
                dropping[0] += len(chunk)
                continue
            yield Oversize(size=dropping[0] + nl + 1, head=head)
            dropping = None
            chunk = chunk[nl + 1:]
        buf += chunk
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(buf[start:nl])
            start = nl + 1
            if len(line) > max_line:
                yield Oversize(size=len(line) + 1, head=line[:512])
                continue
            line = _clean(line)
            if line:
                yield line
        del buf[:start]
        if len(buf) > max_line:  # no line end within the limit: drop the rest of this line as it comes
            dropping, head = [len(buf)], bytes(buf[:512])
            buf.clear()
    if dropping is not None:
        yield Oversize(size=dropping[0], head=head)
    elif buf:
        line = bytes(buf)
        if len(line) > max_line:
            yield Oversize(size=len(line), head=line[:512])
        else:
            line = _clean(line)
            if line:
                yield line


def _clean(line: bytes) -> bytes:
    """The line without CR and BOM; empty when it holds only whitespace."""
    line = line.rstrip(b"\r\n")
    if line.startswith(BOM):
        line = line[len(BOM):]
    return line if line.strip() else b""


_DUMP_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


class LineWriter:
    """The only writer of protocol stdout: one lock, one line per message.

    Every message is flushed at once, except those written by the thread named in
    `defer_flushes_of` (the stdin reader): its answers wait in the buffer until it is about to
    block on input (it calls `flush` then) or another thread writes. A host that sends one line
    and waits sees its answer as soon as before; a host that pipelines many gets them in one write.
    """

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._lock = threading.Lock()
        self._deferring: int | None = None
        self._pending = False
        self.closed = False
        self.lines_written = 0

    def defer_flushes_of(self, thread: threading.Thread | None) -> None:
        self._deferring = thread.ident if thread is not None else None

    def write(self, message: object) -> bool:
        data = orjson.dumps(message, option=_DUMP_OPTIONS, default=str)
        with self._lock:
            if self.closed:
                return False
            try:
                self._stream.write(data)
                if threading.get_ident() == self._deferring:
                    self._pending = True
                else:
                    self._stream.flush()
                    self._pending = False
            except (BrokenPipeError, OSError, ValueError) as exc:
                self._lost(exc)
                return False
            self.lines_written += 1
            return True

    def flush(self) -> None:
        """Send what the deferring thread wrote (it is about to wait for input, or stop)."""
        with self._lock:
            if not self._pending or self.closed:
                return
            self._pending = False
            try:
                self._stream.flush()
            except (BrokenPipeError, OSError, ValueError) as exc:
                self._lost(exc)

    def _lost(self, exc: Exception) -> None:
        # The host went away; keep running so the job can finish and the ledger is right.
        self.closed = True
        log.warning("protocol stdout closed: %s", exc)
