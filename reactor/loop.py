"""The event loop: one selector, a heap of timers, next-turn callbacks, signal wake-up.

Theory of operation. One turn of `run()`:
1. `select` with a timeout up to the nearest timer (0 when callbacks are ready or
   a reader is owed a turn);
2. readers that *declined* last turn are offered a read first, those that waited
   longest first, whether or not the selector reports them again. A handler's
   `on_readable()` returns False when the turn's budget ran out before it was
   done (unread bytes, or decoded messages it has not handed over yet), and a
   handler that ran out outside `on_readable()` asks with `read_next_turn()`.
   epoll hands ready keys back in the same order turn after turn, so without this
   the keys at its head would take every turn's budget while the rest starve;
3. for each ready key still registered, `key.data.on_readable()` /
   `on_writable()`: the registered object is the handler, so there is no side
   table keyed by fd (and a handler closed earlier in the turn is skipped). At
   most `MAX_EVENTS_PER_TURN` keys are served; readiness is level-triggered, so
   the rest are reported again next turn (10,000 peers hanging up at once would
   otherwise make one very long turn);
4. run the timers that are due (cancelled ones are skipped lazily);
5. run the callbacks that were ready when the turn began (new ones wait for the
   next turn, so a callback that schedules another cannot starve I/O);
6. run the end-of-turn step (the service commits its group of batches there).
The loop measures each turn's busy time (everything but the wait in `select`):
`last_turn`, `longest_turn`, and a warning for a turn over `slow_turn_warning`.

Faults. A handler, timer or callback that raises is *isolated*: the exception is
logged once with its traceback, the object it belongs to (the handler, or the
object a callback is a bound method of) is told through its `fault(error)` when it
has one (a connection aborts itself there), every fault listener is told (the
service rolls back the turn's transaction), and the loop goes on. The end-of-turn
step is not isolated: it is where the central's shared state moves forward, so an
exception there ends `run()`, and the process stops on purpose rather than serve
from a state it cannot trust. asyncio has the first rule (a protocol's exception
closes its own transport), Tornado the second (a failing callback is logged and
the loop survives).

Signals: `signal.set_wakeup_fd` points at one end of a non-blocking socket pair;
the Python-level handler only records the signal number, and the loop calls the
registered callback when the wake-up socket turns readable.

Time: `clock` (monotonic seconds) is injectable, so tests can move time instead of
waiting for it.
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
    """Owns the selector, the timer heap, the ready callbacks, the end-of-turn step,
    the readers owed a turn, fault isolation and the signal wake-up. Knows nothing
    of lotteries."""

    def __init__(self, slow_turn_warning: float = 0.05, clock: Callable[[], float] = time.monotonic) -> None:
        self.selector = selectors.DefaultSelector()
        self._clock = clock
        self._timers: list[tuple[float, int, Timer]] = []
        self._cancelled_timers = 0  # still in the heap; compacted when they are the majority
        self._sequence = itertools.count()
        self._ready: deque[tuple[Callable, tuple]] = deque()
        self._end_of_turn: Callable[[], None] | None = None
        self._declined: dict[int, tuple[object, int]] = {}  # fd -> (handler, turns in a row it was owed a read)
        self._fault_listeners: list[Callable[[BaseException], None]] = []
        self._signal_callbacks: dict[int, Callable[[int], None]] = {}
        self._wakeup: _SignalWakeup | None = None
        self._running = False
        self.slow_turn_warning = slow_turn_warning
        self.longest_turn = 0.0
        self.last_turn = 0.0
        self.turns = 0
        self.faults = 0

    # --- registration -----------------------------------------------------------
    def register(self, sock, events: int, handler) -> None:
        """Watches `sock`; `handler.on_readable()` / `on_writable()` are called when ready."""
        self.selector.register(sock, events, handler)

    def modify(self, sock, events: int, handler) -> None:
        self.selector.modify(sock, events, handler)

    def unregister(self, sock) -> None:
        self.selector.unregister(sock)

    def read_next_turn(self, sock) -> None:
        """Offers `sock`'s handler a read first next turn, readable or not: it holds
        input it could not finish for want of the turn's budget."""
        key = self.selector.get_map().get(sock.fileno())
        if key is not None and key.fd not in self._declined:
            self._declined[key.fd] = (key.data, 0)

    # --- time -------------------------------------------------------------------
    def time(self) -> float:
        return self._clock()

    def call_at(self, when: float, callback: Callable, *args) -> Timer:
        timer = Timer(when, callback, args, self)
        heapq.heappush(self._timers, (when, next(self._sequence), timer))
        return timer

    def call_later(self, delay: float, callback: Callable, *args) -> Timer:
        return self.call_at(self.time() + delay, callback, *args)

    def call_soon(self, callback: Callable, *args) -> None:
        """Runs `callback(*args)` in the next turn."""
        self._ready.append((callback, args))

    def set_end_of_turn(self, step: Callable[[], None]) -> None:
        """`step()` ends every turn; an exception from it ends `run()` (see Faults)."""
        self._end_of_turn = step

    # --- faults -----------------------------------------------------------------
    def add_fault_listener(self, listener: Callable[[BaseException], None]) -> None:
        """`listener(error)` is told of every isolated fault, after its owner."""
        self._fault_listeners.append(listener)

    def isolate(self, owner, callback: Callable, *args):
        """`callback(*args)`; a fault in it ends `owner` (its `fault()`), not the caller."""
        try:
            return callback(*args)
        except Exception as error:
            self._fault(owner, callback, error)
            return None

    def _fault(self, owner, callback, error: Exception) -> None:
        self.faults += 1
        where = f"{type(owner).__name__}.{getattr(callback, '__name__', '?')}"
        log.error("action: fault | result: fail | where: %s | error: %r", where, error, exc_info=error)
        on_fault = getattr(owner, "fault", None)
        if on_fault is not None:
            try:
                on_fault(error)
            except Exception as second:  # it cannot even end itself: nothing more to do for it
                log.error("action: fault | result: fail | where: %s.fault | error: %r",
                          type(owner).__name__, second, exc_info=second)
        for listener in self._fault_listeners:
            listener(error)

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

    def run_once(self, max_wait: float | None = None) -> None:
        """One turn; `max_wait` bounds the wait in `select` (a test's fake clock may be
        far from its next timer)."""
        timeout = max_wait
        if self._ready or self._declined:
            timeout = 0.0
        elif self._timers:
            timeout = max(0.0, self._timers[0][0] - self.time())
            if max_wait is not None:
                timeout = min(timeout, max_wait)
        events = self.selector.select(timeout)
        started = self.time()

        self._serve_io(events)
        self._run_due_timers()
        for _ in range(len(self._ready)):
            callback, args = self._ready.popleft()
            self.isolate(getattr(callback, "__self__", None), callback, *args)
        if self._end_of_turn is not None:
            self._end_of_turn()

        busy = self.time() - started
        self.turns += 1
        self.last_turn = busy
        if busy > self.longest_turn:
            self.longest_turn = busy
        if busy > self.slow_turn_warning:
            log_event(log, logging.WARNING, "loop_turn", "in_progress", slow_ms=f"{busy * 1000:.1f}")

    def _serve_io(self, events: list) -> None:
        registered = self.selector.get_map()  # a live view
        owed, self._declined = self._declined, {}
        served = 0
        for fd, (handler, turns) in sorted(owed.items(), key=lambda item: -item[1][1]):  # longest wait first
            key = registered.get(fd)
            if key is None or key.data is not handler or not key.events & selectors.EVENT_READ:
                continue  # closed, replaced or paused since
            if served >= MAX_EVENTS_PER_TURN:
                self._declined[fd] = (handler, turns)
                continue
            served += 1
            if self._call(handler, handler.on_readable) is False:
                self._declined[fd] = (handler, turns + 1)
        for key, mask in events:
            if served >= MAX_EVENTS_PER_TURN:
                break
            served += 1
            # A handler earlier in this turn (or this one's own read) may have closed
            # this one: only a key still registered gets its call.
            if mask & selectors.EVENT_READ and key.fd not in owed and registered.get(key.fd) is key:
                if self._call(key.data, key.data.on_readable) is False:
                    self._declined[key.fd] = (key.data, 1)
            if mask & selectors.EVENT_WRITE and registered.get(key.fd) is key:
                self._call(key.data, key.data.on_writable)

    def _call(self, handler, method: Callable):
        try:
            return method()
        except Exception as error:
            self._fault(handler, method, error)
            return None

    def _run_due_timers(self) -> None:
        now = self.time()
        while self._timers and self._timers[0][0] <= now:
            timer = heapq.heappop(self._timers)[2]
            if timer.cancelled:
                self._cancelled_timers -= 1
                continue
            callback, args = timer.callback, timer.args
            timer.cancelled = True  # fired: out of the heap, so not counted
            timer.callback = timer.args = None
            self.isolate(getattr(callback, "__self__", None), callback, *args)
        if self._cancelled_timers > 64 and self._cancelled_timers > len(self._timers) // 2:
            self._timers = [entry for entry in self._timers if not entry[2].cancelled]
            heapq.heapify(self._timers)
            self._cancelled_timers = 0

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
