"""What the admin listener shows: the running central's figures, read at each scrape.

The service, the server, the loop and the log keep plain counters as they work (per
batch or per turn, never per bet); this module turns them into the status document,
the readiness answer and the Prometheus families when someone asks. Only the two
histograms are fed as things happen, once a turn (`TurnEnd` calls `turn_ended`).
"""

from __future__ import annotations

from protocol import ErrorCode
from runtime.settings import __version__

from .metrics import CentralMetrics
from .service import Lottery
from .status import BetRate, DrawFigures, LiveFigures, build_status


class CentralStatus:
    """Owns the metric families and the bet rate; reads everything else from the
    lottery, the server, the loop and the log output when asked (a StatusSource)."""

    def __init__(self, lottery: Lottery, server, loop, logs=None) -> None:
        self.lottery = lottery
        self.server = server
        self.loop = loop
        self.logs = logs
        self.started = loop.time()
        self.rate = BetRate()
        self.metrics_families = CentralMetrics(__version__)
        self.metrics_families.registry.on_scrape(self._refresh)
        self._agency_children = {}

    # --- fed once a turn --------------------------------------------------------------
    def turn_ended(self, committed: bool | None) -> None:
        families = self.metrics_families
        families.loop_turn_duration.observe(self.loop.last_turn)  # the turn before this end
        if committed is not None:
            families.commit_duration.observe(self.lottery.store.last_commit)
        self.rate.record(self.loop.time(), self._total_bets())

    # --- StatusSource -------------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        if self.loop.turns == 0:
            return False, "starting"
        if self.server.draining:
            return False, "draining: the central is shutting down"
        if self.lottery.last_commit_failed:
            return False, "the store's last write failed"
        return True, ""

    def status(self) -> dict:
        lottery = self.lottery
        now = self.loop.time()
        accounts = lottery.agencies.values()
        return build_status(
            version=__version__,
            expected=len(lottery.agencies),
            committed={a.number: a.committed for a in accounts},
            done={a.number for a in accounts if a.done},
            draw=DrawFigures.of(lottery.draw.state, lottery.draw.winners, lottery.record.commitment,
                                lottery.record.seed if lottery.draw.state is not None else None),
            digests={a.number: a.durable_digest() for a in accounts},
            live=LiveFigures(
                connected=frozenset(a.number for a in accounts if a.session is not None),
                connections=len(self.server.connections),
                bets_per_second=self.rate.per_second(now),
                uptime_s=now - self.started,
            ),
        )

    def metrics(self) -> str:
        return self.metrics_families.render()

    # --- inside ---------------------------------------------------------------------------
    def _total_bets(self) -> int:
        return sum(account.committed for account in self.lottery.agencies.values())

    def _refresh(self) -> None:
        """Copies the counters the central keeps into the families, at scrape time."""
        families, lottery, agencies = self.metrics_families, self.lottery, self.server.agencies
        for account in lottery.agencies.values():
            child = self._agency_children.get(account.number)
            if child is None:
                child = self._agency_children[account.number] = families.bets_stored.labels(str(account.number))
            child.value = account.committed  # durable bets never decrease: a counter
        families.batches_acked.value = lottery.batches_acked
        families.batches_refused.value = lottery.batches_refused
        for code, count in lottery.errors_sent.items():
            families.errors_sent.labels(ErrorCode(code).name).value = count
        families.connections.set(len(agencies.connections))
        families.connections_accepted.value = agencies.accepted
        families.connections_refused.labels("busy").value = agencies.refused
        families.connections_refused.labels("evicted").value = agencies.evicted
        families.bytes_received.value = self.server.budget.received
        families.bytes_sent.value = self.server.budget.sent
        families.agencies_expected.set(len(lottery.agencies))
        families.agencies_done.set(sum(1 for account in lottery.agencies.values() if account.done))
        families.set_draw_state(lottery.draw.phase)
        families.log_lines_dropped.value = self.logs.dropped if self.logs is not None else 0
