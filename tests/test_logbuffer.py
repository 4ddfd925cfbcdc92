"""The server's log output: bounded, never waits, counts what it drops, quiet when the reader is gone."""

from __future__ import annotations

import fcntl
import logging
import os

from runtime.logbuffer import BufferedLogHandler


def record(text: str) -> logging.LogRecord:
    return logging.LogRecord("test", logging.INFO, __file__, 0, text, None, None)


def drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_full_pipe_never_blocks_and_lines_past_the_limit_are_counted_then_told():
    reader, writer = os.pipe()
    fcntl.fcntl(writer, 1031, 4096)  # F_SETPIPE_SZ: a one-page pipe
    handler = BufferedLogHandler(writer, limit=10_000)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for n in range(1000):  # ~40 KB of lines into a 4 KB pipe and a 10 KB buffer
        handler.emit(record(f"action: line | result: success | n: {n:06d}"))
        handler.write_ready()  # returns at once although nobody reads
    assert handler.wants_write and handler.dropped > 0
    out = b""
    while handler.wants_write:
        out += drain(reader)
        handler.write_ready()
    out += drain(reader)
    lines = out.decode().splitlines()
    assert lines[-1] == f"action: log_lines_dropped | result: in_progress | count: {handler.dropped}"
    kept = [int(line.rsplit(": ", 1)[1]) for line in lines[:-1]]
    assert kept == sorted(kept) and len(kept) + handler.dropped == 1000  # whole lines, in order, none twice
    os.close(reader)
    os.close(writer)


def test_a_reader_that_went_away_ends_the_output_quietly():
    reader, writer = os.pipe()
    os.close(reader)
    handler = BufferedLogHandler(writer)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(record("one"))
    handler.write_ready()  # EPIPE: no exception, no stderr
    handler.emit(record("two"))
    handler.write_ready()
    assert handler.broken and handler.dropped == 2 and not handler.wants_write
    os.close(writer)


def test_a_regular_file_is_written_directly(tmp_path):
    path = tmp_path / "log.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    handler = BufferedLogHandler(fd)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(record("hello"))
    assert not handler.wants_write  # never watched: a file cannot be polled
    handler.write_ready()
    os.close(fd)
    assert path.read_text() == "hello\n"
