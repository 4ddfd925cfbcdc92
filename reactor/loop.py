"""The event loop: one selector, a heap of timers, next-turn callbacks, signal wake-up.

Theory of operation. One turn of `run()`:
1. `select` with a timeout up to the nearest timer (0 when callbacks are ready);
2. for each ready key still registered, call `key.data.on_readable()` /
   `on_writable()`: the registered object is the handler, so there is no side
   table keyed by fd (and a handler closed earlier in the turn is skipped). At
   most `MAX_EVENTS_PER_TURN` keys are served; readiness is level-triggered, so
   the rest are reported again next turn (10,000 peers hanging up at once would
   otherwise make one turn of a few hundred milliseconds). A handler whose
   `on_readable()` returns False *declined* (its turn's read budget was spent):
   declined keys go first next turn, those that waited longest first. epoll hands
   ready keys back in the same order turn after turn, so without this the keys at
   its head would take every turn's budget while the rest starve;
3. run the timers that are due (cancelled ones are skipped lazily);
4. run the callbacks that were ready when the turn began (new ones wait for the
   next turn, so a callback that schedules another cannot starve I/O);
5. run the end-of-turn hooks (the service commits its group of batches there).
The loop measures each turn's busy time (everything but the wait in `select`);
`longest_turn` is the worst seen, and a turn over `slow_turn_warning` is logged.

Signals: `signal.set_wakeup_fd` points at one end of a non-blocking socket pair;
the Python-level handler only records the signal number, and the loop calls the
registered callback from step 2 when the wake-up socket turns readable.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import signal
import socket
import time
from collections import deque
from typing import Callable

from runtime.logfmt import log_event

log = logging.getLogger(__name__)

MAX_EVENTS_PER_TURN = 1024


class Timer:
    """A callback due at a monotonic time; `cancel()` makes the loop skip it."""

    __slots__ = ("when", "callback", "args", "cancelled", "_loop")

    def __init__(self, when: float, callback: Callable, args: tuple, loop: "EventLoop") -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False
        self._loop = loop

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback = self.args = None  # drop references early
            self._loop._cancelled_timers += 1


class _SignalWakeup:
    """The read end of the wake-up socket pair: drains it and reports the signals."""

    def __init__(self, loop: "EventLoop") -> None:
        self._loop = loop
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)
        self.previous_fd = signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)

    def on_readable(self) -> None:
        try:
            data = self.reader.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        for signum in data:
            self._loop._signal_arrived(signum)

    def close(self) -> None:
        signal.set_wakeup_fd(self.previous_fd)
        self.reader.close()
        self.writer.close()


class EventLoop:
    """Owns the selector, the timer heap, the ready callbacks, the end-of-turn hooks
    and the signal wake-up. Knows nothing of lotteries."""

    def __init__(self, slow_turn_warning: float = 0.05) -> None:
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._cancelled_timers = 0  # still in the heap; compacted when they are the majority
        self._sequence = itertools.count()
        self._ready: deque[tuple[Callable, tuple]] = deque()
        self._end_of_turn: list[Callable[[], None]] = []
        self._declined: dict[int, int] = {}  # fd -> turns in a row it declined to read
        self._signal_callbacks: dict[int, Callable[[int], None]] = {}
        self._wakeup: _SignalWakeup | None = None
        self._running = False
        self.slow_turn_warning = slow_turn_warning
        self.longest_turn = 0.0
        self.turns = 0

    # --- registration -----------------------------------------------------------
    def register(self, sock, events: int, handler) -> None:
        """Watches `sock`; `handler.on_readable()` / `on_writable()` are called when ready."""
        self.selector.register(sock, events, handler)

    def modify(self, sock, events: int, handler) -> None:
        self.selector.modify(sock, events, handler)

    def unregister(self, sock) -> None:
        self.selector.unregister(sock)

    # --- time -------------------------------------------------------------------
    @staticmethod
    def time() -> float:
        return time.monotonic()

    def call_at(self, when: float, callback: Callable, *args) -> Timer:
        timer = Timer(when, callback, args, self)
        heapq.heappush(self._timers, (when, next(self._sequence), timer))
        return timer

    def call_later(self, delay: float, callback: Callable, *args) -> Timer:
        return self.call_at(self.time() + delay, callback, *args)

    def call_soon(self, callback: Callable, *args) -> None:
        """Runs `callback(*args)` in the next turn."""
        self._ready.append((callback, args))

    def add_end_of_turn_hook(self, hook: Callable[[], None]) -> None:
        self._end_of_turn.append(hook)

    # --- signals ----------------------------------------------------------------
    def add_signal_handler(self, signum: int, callback: Callable[[int], None]) -> None:
        """`callback(signum)` runs inside the loop, never inside the signal handler."""
        if self._wakeup is None:
            self._wakeup = _SignalWakeup(self)
            self.register(self._wakeup.reader, selectors.EVENT_READ, self._wakeup)
        self._signal_callbacks[signum] = callback
        signal.signal(signum, _record_only)

    def _signal_arrived(self, signum: int) -> None:
        callback = self._signal_callbacks.get(signum)
        if callback is not None:
            callback(signum)

    # --- running ----------------------------------------------------------------
    def stop(self) -> None:
        """Ends `run()` after the current turn."""
        self._running = False

    def run(self) -> None:
        self._running = True
        while self._running:
            self.run_once()

    def run_once(self) -> None:
        timeout = None
        if self._ready:
            timeout = 0.0
        elif self._timers:
            timeout = max(0.0, self._timers[0][0] - self.time())
        events = self.selector.select(timeout)
        started = self.time()

        registered = self.selector.get_map()  # a live view
        waited, declined = self._declined, {}
        if waited:
            events.sort(key=lambda event: -waited.get(event[0].fd, 0))  # stable: epoll's order otherwise
        for key, mask in events[:MAX_EVENTS_PER_TURN]:
            # A handler earlier in this turn (or this one's own read) may have closed
            # this one: only a key still registered gets its call.
            if mask & selectors.EVENT_READ and registered.get(key.fd) is key:
                if key.data.on_readable() is False:
                    declined[key.fd] = waited.get(key.fd, 0) + 1
            if mask & selectors.EVENT_WRITE and registered.get(key.fd) is key:
                key.data.on_writable()
        self._declined = declined

        now = self.time()
        while self._timers and self._timers[0][0] <= now:
            timer = heapq.heappop(self._timers)[2]
            if timer.cancelled:
                self._cancelled_timers -= 1
            else:
                callback, args = timer.callback, timer.args
                timer.cancelled = True  # fired: out of the heap, so not counted
                timer.callback = timer.args = None
                callback(*args)
        if self._cancelled_timers > 64 and self._cancelled_timers > len(self._timers) // 2:
            self._timers = [entry for entry in self._timers if not entry[2].cancelled]
            heapq.heapify(self._timers)
            self._cancelled_timers = 0

        for _ in range(len(self._ready)):
            callback, args = self._ready.popleft()
            callback(*args)

        for hook in self._end_of_turn:
            hook()

        busy = self.time() - started
        self.turns += 1
        if busy > self.longest_turn:
            self.longest_turn = busy
        if busy > self.slow_turn_warning:
            log_event(log, logging.WARNING, "loop_turn", "in_progress", slow_ms=f"{busy * 1000:.1f}")

    def close(self) -> None:
        if self._wakeup is not None:
            for signum in self._signal_callbacks:
                signal.signal(signum, signal.SIG_DFL)
            self.unregister(self._wakeup.reader)
            self._wakeup.close()
            self._wakeup = None
        self.selector.close()


def _record_only(signum, frame) -> None:
    """The Python-level handler: the wake-up fd already carries the signal number."""
