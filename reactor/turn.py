"""The end of a loop turn, in one place: commit, log, answer, plan the next turn."""

from __future__ import annotations

import selectors
from typing import Callable

from .limits import TurnBudget
from .service import Lottery


# A commit may wait for later turns while input keeps coming (the turn spent its
# whole budget), up to these bounds: the longest an ACK waits for it, the most bets
# one commit takes. At light load every turn commits, as before.
GROUP_COMMIT_WAIT = 0.05  # seconds
GROUP_COMMIT_BETS = 8_192


class TurnEnd:
    """Owns the order in which a turn ends (the loop's end-of-turn step):

    0. when the turn spent its whole read budget (more input waits), the commit may
       wait for the next turns, so one fsync covers several turns' batches: turns
       stay as short as the budget makes them, and commits do not multiply with the
       load. It waits GROUP_COMMIT_WAIT at most, or until GROUP_COMMIT_BETS bets are
       staged; a turn that read less than its budget always commits;
    1. the service commits what was staged (group commit) and logs each stored
       batch; the database's files are checked here, and DatabaseLost ends the loop;
    2. the turn's log lines are written as far as stdout takes them without waiting,
       so a course line (`apuesta_recibida`) is out before its ACK whenever the
       output flows;
    3. the replies that waited for the commit go out, in arrival order;
    4. the next turn is planned: the WAL checkpoint, when due, gets a turn of its own
       (nothing is read in it), else the read budget is renewed; the log output is
       watched for writability only while lines wait.

    The bench's comparison servers end their turns with the same object (without a
    loop: the checkpoint then runs at once).
    """

    def __init__(self, lottery: Lottery, loop=None, budget: TurnBudget | None = None, logs=None,
                 observe: Callable[[bool | None], None] | None = None) -> None:
        self.lottery = lottery
        self.loop = loop
        self.budget = budget
        self.logs = logs
        self.observe = observe  # the admin side's per-turn figures (turn and commit durations)
        self._watching_logs = False
        self._waiting_since: float | None = None  # when the commit started to wait for later turns

    def __call__(self, final: bool = False) -> None:
        """Ends a turn; `final`: the last one, which always commits."""
        if not final and self._commit_may_wait():
            if self.observe is not None:
                self.observe(None)
            if self.logs is not None:
                self.logs.write_ready()
            self._plan_next_turn()
            return
        self._waiting_since = None
        committed = self.lottery.commit_turn()
        if self.observe is not None:
            self.observe(committed)
        if self.logs is not None:
            self.logs.write_ready()
        self.lottery.release_turn(committed)
        self._plan_next_turn()

    def _commit_may_wait(self) -> bool:
        budget, lottery = self.budget, self.lottery
        if self.loop is None or (budget.remaining > 0 and budget.frames > 0):
            return False  # the turn took all there was: answer now
        if not lottery.store.in_transaction or lottery.turn_lost:
            return False
        now = self.loop.time()
        if self._waiting_since is None:
            self._waiting_since = now
        return now - self._waiting_since < GROUP_COMMIT_WAIT and lottery.bets_awaiting_commit < GROUP_COMMIT_BETS

    def _plan_next_turn(self) -> None:
        store = self.lottery.store
        if self.loop is None:
            if store.checkpoint_due:
                store.checkpoint()
            return
        if store.checkpoint_due:
            self.budget.spend_all()  # the next turn reads nothing: it checkpoints
            self.loop.call_soon(store.checkpoint)
        else:
            self.budget.reset()
        if self.logs is not None and self.logs.wants_write != self._watching_logs:
            if self._watching_logs:
                self.loop.unregister(self.logs.fd)
            else:
                self.loop.register(self.logs.fd, selectors.EVENT_WRITE, self.logs)
            self._watching_logs = not self._watching_logs
