"""The draw: fixed once every DONE is durable, scanned slice by slice, announced once.

Theory of operation. The draw moves open -> drawing -> done, one staged step at a
time, each made durable by the turn's commit like any batch:
1. when every expected agency's DONE is durable, the winning number is fixed and
   recorded with the last bet it covers;
2. the bets are scanned for winners `DRAW_SCAN_SLICE` rowids a turn, so ACKs and other
   sessions keep flowing meanwhile;
3. once the last slice is durable, the commit step reads the winners and logs
   `sorteo`, and the release step answers every held query.
A step that fails (its staging or its commit) is tried again after a capped,
doubling backoff, logged once an attempt: a full disk never makes a spinning loop.
A restart resumes from what the store recorded; a finished draw is never drawn or
announced again.
"""

from __future__ import annotations

import logging
from typing import Callable

from runtime.logfmt import log_event

from .store import DrawState, StorageError, Store

log = logging.getLogger(__name__)

DRAW_SCAN_SLICE = 50_000  # rowids scanned for winners per loop turn
RETRY_FIRST = 0.1  # seconds before a failed step is tried again; doubles up to the cap
RETRY_CAP = 5.0


class Draw:
    """Owns the draw's progress: its durable and staged state, the step in flight, the
    backoff after a failure, and the winners once it is done."""

    def __init__(
        self,
        store: Store,
        loop,
        winning_number: Callable[[], int],
        everyone_done: Callable[[], bool],
        transaction_lost: Callable[[str], None],
        seed: str | None = None,
    ) -> None:
        self._store = store
        self._loop = loop
        self._winning_number = winning_number  # called once, when the draw is fixed
        self._seed = seed  # a verifiable draw's secret (hex), revealed when the draw is announced
        self._everyone_done = everyone_done
        self._transaction_lost = transaction_lost
        self.state: DrawState | None = store.draw()
        self.winners: dict[int, list[str]] | None = store.winners() if self.finished else None
        self._staged: DrawState | None = None
        self._scheduled = False
        self._stopped = False
        self._retry = 0.0  # the backoff after a failed step; 0 after a good one
        self._resume_at = 0.0

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state.finished

    @property
    def phase(self) -> str:
        """open (waiting for DONEs), drawing (fixed, scanning, not yet announced), done."""
        if self.state is None:
            return "open"
        return "done" if self.winners is not None else "drawing"

    def stop(self) -> None:
        """Draining: no further step."""
        self._stopped = True

    # --- the turn's commit -------------------------------------------------------------
    def turn_committed(self) -> None:
        if self._staged is None:
            return
        started = self.state is None
        self.state, self._staged = self._staged, None
        self._retry = 0.0
        if started:
            log_event(log, logging.INFO, "draw_start", "in_progress", bets=self.state.last_rowid)
        elif self.state.last_rowid > DRAW_SCAN_SLICE:  # a long scan tells how far it got
            log_event(log, logging.INFO, "draw_scan", "in_progress", scanned=self.state.scanned_to,
                      total=self.state.last_rowid)

    def turn_failed(self) -> None:
        if self._staged is not None:
            self._staged = None
            self._failed("its commit failed")

    def announce_if_due(self) -> bool:
        """Once the scan is durable: reads the winners and logs the draw (True then)."""
        if not self.finished or self.winners is not None or self._loop.time() < self._resume_at:
            return False
        try:
            self.winners = self._store.winners()
        except StorageError as error:
            self._failed(str(error))
            return False
        self._retry = 0.0
        revealed = {} if self._seed is None else {"seed": self._seed}
        log_event(log, logging.INFO, "sorteo", "success", numero_ganador=self.state.winning_number,
                  ganadores=sum(map(len, self.winners.values())), **revealed)
        return True

    # --- steps -------------------------------------------------------------------------
    def advance(self) -> None:
        """Schedules the next step when one is due and no backoff runs."""
        if self._stopped or self._scheduled or self.finished:
            return
        if self.state is None and not self._everyone_done():
            return
        if self._loop.time() < self._resume_at:
            return  # the timer set by _failed comes back
        self._scheduled = True
        self._loop.call_soon(self._step)

    def _step(self) -> None:
        """Stages one step; the turn's commit makes it durable."""
        self._scheduled = False
        if self._stopped:
            return
        try:
            if self.state is None:
                self._staged = self._store.stage_draw(self._winning_number())
            else:
                self._staged = self._store.stage_winner_scan(self.state, DRAW_SCAN_SLICE)
        except StorageError as error:
            if error.transaction_lost:
                self._transaction_lost("the store lost the turn's transaction")
            self._failed(str(error))

    def fault(self, error: BaseException) -> None:
        """The loop isolated a fault in a step: it is tried again later."""
        self._staged = None
        self._failed(f"fault ({type(error).__name__})")

    def _failed(self, why: str) -> None:
        self._retry = min(RETRY_CAP, self._retry * 2 or RETRY_FIRST)
        self._resume_at = self._loop.time() + self._retry
        log_event(log, logging.ERROR, "draw_step", "fail", error=why.replace("|", "/"),
                  retry_in_s=f"{self._retry:.1f}")
        self._loop.call_at(self._resume_at, self.advance)
