"""Log lines that never make the loop wait: a bounded buffer written as far as stdout takes.

A server that logs with a blocking `write` stops serving when nobody reads its
stdout: a full pipe blocks the write, and the loop's thread with it (a stalled
`docker logs`, a pager, a crashed log shipper). So the server's log lines go into a
bounded buffer, and the buffer is written only as far as the descriptor takes
without waiting:

- a pipe, socket or terminal is written only after `select` says it is writable,
  and at most PIPE_BUF bytes at a time: POSIX makes such a write to a writable pipe
  complete without blocking;
- a regular file never blocks for long and cannot be polled, so it is written
  directly.

When the buffer is full, new lines are dropped and counted; once the buffer has
drained, one line says how many were lost. A reader that went away (EPIPE) ends the
output quietly: later lines are counted as dropped, nothing is printed to stderr.
The loop asks `wants_write` after each turn and watches the descriptor only while
lines wait.
"""

from __future__ import annotations

import logging
import os
import select
import stat
import time
from collections import deque

PIPE_BUF = select.PIPE_BUF  # 4096 on Linux
DEFAULT_LIMIT = 1 << 20  # bytes of lines kept while the output does not take them


class BufferedLogHandler(logging.Handler):
    """Owns the lines not yet written to one descriptor, the count of lines dropped,
    and the rule for writing without waiting."""

    def __init__(self, fd: int, limit: int = DEFAULT_LIMIT) -> None:
        super().__init__()
        self.fd = fd
        self.limit = limit
        self._lines: deque[bytes] = deque()
        self._size = 0
        self._head = memoryview(b"")  # the unwritten rest of a line a short write cut
        self.dropped = 0
        self._dropped_told = 0
        self.broken = False  # the reader went away
        self._poll: select.poll | None = None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            self._poll = select.poll()
            self._poll.register(fd, select.POLLOUT)

    @property
    def wants_write(self) -> bool:
        """Lines wait, and the descriptor must be watched for writability to write them."""
        return self._poll is not None and bool(self._lines or self._head) and not self.broken

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:
            self.handleError(record)
            return
        if self.broken or self._size + len(line) > self.limit:
            self.dropped += 1
            return
        self._lines.append(line)
        self._size += len(line)

    def write_ready(self) -> None:
        """Writes what the descriptor takes now; never waits."""
        while not self.broken:
            if not self._head:
                if not self._lines:
                    break
                self._head = memoryview(self._take_chunk())
            if self._poll is not None and not self._poll.poll(0):
                return
            try:
                written = os.write(self.fd, self._head[:PIPE_BUF])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EPIPE and friends: nobody reads any more
                self._give_up()
                return
            self._head = self._head[written:]
        self._tell_dropped()

    def on_writable(self) -> None:
        """The loop's call while the server watches the descriptor (see `wants_write`)."""
        self.write_ready()

    def flush_within(self, seconds: float) -> None:
        """At exit: waits up to `seconds` for the output to take what is left."""
        deadline = time.monotonic() + seconds
        while not self.broken and (self._lines or self._head):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._poll is not None:
                self._poll.poll(remaining * 1000)
            self.write_ready()

    def _take_chunk(self) -> bytes:
        """Whole lines up to PIPE_BUF bytes (one longer line alone)."""
        parts = [self._lines.popleft()]
        size = len(parts[0])
        while self._lines and size + len(self._lines[0]) <= PIPE_BUF:
            size += len(self._lines[0])
            parts.append(self._lines.popleft())
        self._size -= size
        return b"".join(parts)

    def _tell_dropped(self) -> None:
        if self.dropped > self._dropped_told and not (self._lines or self._head or self.broken):
            lost = self.dropped - self._dropped_told
            self._dropped_told = self.dropped
            record = logging.LogRecord("runtime.logbuffer", logging.WARNING, __file__, 0,
                                       "action: log_lines_dropped | result: in_progress | count: %d", (lost,), None)
            self.emit(record)

    def _give_up(self) -> None:
        self.broken = True
        self.dropped += len(self._lines) + bytes(self._head).count(b"\n")
        self._lines.clear()
        self._size = 0
        self._head = memoryview(b"")
