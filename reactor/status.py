"""The status document: the state a person asks about, as one JSON object.

`GET /status.json` serves it live and `python -m reactor stats` prints it from the
database; `build_status()` makes both from plain figures, so one schema describes
them. Counts only: never a name or a document (bets are personal data).

Schema (keys always present unless marked *live*, which `stats` leaves out):

    {
      "version": "0.1.0",            the central's version
      "expected": 5,                 agencies the draw waits for (numbered 1..expected)
      "missing": [4, 5],             expected agencies not done yet, ascending
      "total_bets": 78697,           bets stored, all agencies
      "bets_per_second": 12345.6,    live: stored over the last few seconds
      "connections": 3,              live: agency connections open now
      "uptime_s": 12.5,              live: seconds since the central started
      "agencies": [                  one per agency 1..expected (and any other with bets), ascending
        {"agency": 1,
         "committed": 15000,         bets stored
         "done": true,               sent DONE
         "digest": "5f0c...",        digest(committed) in hex: the receipt PROTOCOL.md v2 defines
         "connected": false,         live: has a session now
         "winners": 2}               only once the draw is done: how many of its bets won
      ],
      "draw": {
        "state": "open",             open (waiting for agencies) | drawing (scanning) | done
        "scanned": 0,                rows scanned for winners so far
        "total": 0,                  rows the scan covers (0 until the draw starts)
        "winning_number": null,      once fixed
        "winners": null,             once done: winners in all agencies
        "commitment": null,          a verifiable draw's commitment, once published
        "seed": null                 a verifiable draw's seed, once revealed
      }
    }
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Collection, Mapping

DRAW_STATES = ("open", "drawing", "done")


@dataclass(frozen=True)
class DrawFigures:
    """What is known of the draw. `winners` maps agency to its number of winners,
    once the draw is done."""

    state: str = "open"
    scanned: int = 0
    total: int = 0
    winning_number: int | None = None
    winners: Mapping[int, int] | None = None
    commitment: str | None = None
    seed: str | None = None

    @classmethod
    def of(cls, draw, winners: Mapping[int, list] | None, commitment: str | None = None,
           seed: bytes | None = None) -> "DrawFigures":
        """From the store's DrawState (None before the draw) and the winners once read
        (done means announced, winners known); a verifiable draw's commitment, and its
        seed once the draw is fixed (revealed)."""
        if draw is None:
            return cls(commitment=commitment)
        done = winners is not None
        return cls(
            state="done" if done else "drawing",
            scanned=draw.scanned_to,
            total=draw.last_rowid,
            winning_number=draw.winning_number,
            winners={agency: len(documents) for agency, documents in winners.items()} if done else None,
            commitment=commitment,
            seed=seed.hex() if seed is not None else None,
        )

    def __post_init__(self) -> None:
        if self.state not in DRAW_STATES:
            raise ValueError(f"draw state must be one of {DRAW_STATES}, not {self.state!r}")


@dataclass(frozen=True)
class LiveFigures:
    """What only a running central knows."""

    connected: Collection[int] = field(default_factory=frozenset)  # agencies with a session now
    connections: int = 0  # agency connections open now
    bets_per_second: float = 0.0
    uptime_s: float = 0.0


def build_status(
    *,
    version: str,
    expected: int,
    committed: Mapping[int, int],
    done: Collection[int],
    draw: DrawFigures,
    live: LiveFigures | None = None,
    digests: Mapping[int, bytes] | None = None,
) -> dict:
    """The status document (schema above). `committed` maps agency to bets stored;
    `done` holds the agencies that sent DONE; `digests` each agency's digest(committed)
    (its receipt, PROTOCOL.md version 2); `live` is None for `stats`."""
    done = frozenset(done)
    numbers = sorted(set(range(1, expected + 1)) | set(committed) | done)
    draw_done = draw.state == "done" and draw.winners is not None
    agencies = []
    for number in numbers:
        agency = {"agency": number, "committed": committed.get(number, 0), "done": number in done}
        if digests is not None and number in digests:
            agency["digest"] = digests[number].hex()
        if live is not None:
            agency["connected"] = number in live.connected
        if draw_done:
            agency["winners"] = draw.winners.get(number, 0)
        agencies.append(agency)
    document = {
        "version": version,
        "expected": expected,
        "missing": [number for number in range(1, expected + 1) if number not in done],
        "total_bets": sum(committed.values()),
    }
    if live is not None:
        document["bets_per_second"] = round(live.bets_per_second, 1)
        document["connections"] = live.connections
        document["uptime_s"] = round(live.uptime_s, 1)
    document["agencies"] = agencies
    document["draw"] = {
        "state": draw.state,
        "scanned": draw.scanned,
        "total": draw.total,
        "winning_number": draw.winning_number,
        "winners": sum(draw.winners.values()) if draw_done else None,
        "commitment": draw.commitment,
        "seed": draw.seed,
    }
    return document


class BetRate:
    """Bets stored per second over the last `window` seconds.

    Fed `record(now, total_bets)` as often as convenient (once a turn is fine: it
    keeps a sample at most every `resolution` seconds, so memory stays at
    window/resolution samples); `per_second(now)` reads it. Times come from the
    caller's monotonic clock. The figure may lag by up to `resolution` seconds'
    worth of bets, which is the price of not keeping one sample per turn.
    """

    __slots__ = ("window", "resolution", "_samples", "_latest")

    def __init__(self, window: float = 5.0, resolution: float = 0.25) -> None:
        self.window = window
        self.resolution = resolution
        self._samples: deque[tuple[float, int]] = deque()
        self._latest = 0

    def record(self, now: float, total_bets: int) -> None:
        self._latest = total_bets
        samples = self._samples
        if not samples or now - samples[-1][0] >= self.resolution:
            samples.append((now, total_bets))
        self._forget_before(now)

    def per_second(self, now: float) -> float:
        self._forget_before(now)
        if not self._samples:
            return 0.0
        since, base = self._samples[0]
        elapsed = min(now - since, self.window)
        return (self._latest - base) / elapsed if elapsed > 0 else 0.0

    def _forget_before(self, now: float) -> None:
        # Keep the newest sample at or before the window's start: it gives the total then.
        samples = self._samples
        while len(samples) >= 2 and samples[1][0] <= now - self.window:
            samples.popleft()
