"""What bounds a connection and a loop turn: deadlines, water marks, the turn's budget."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConnectionLimits:
    """Deadlines (seconds) and send-buffer water marks (bytes) of every connection."""

    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    frame_timeout: float = 10.0
    linger: float = 5.0
    high_water: int = 64 * 1024
    low_water: int = 16 * 1024

    def __post_init__(self) -> None:
        # Below one frame a paused connection might never resume (python/asyncio#99).
        if self.high_water <= 8192 or not 0 <= self.low_water < self.high_water:
            raise ValueError("need 8192 < high_water and 0 <= low_water < high_water")


def next_deadline(
    limits: ConnectionLimits, identified: bool, last_progress: float, frame_started: float | None, held: bool
) -> tuple[float, str] | None:
    """The connection's earliest deadline and its name (handshake, frame or idle), or None."""
    candidates = []
    if not identified:
        candidates.append((last_progress + limits.handshake_timeout, "handshake"))
    if frame_started is not None:
        candidates.append((frame_started + limits.frame_timeout, "frame"))
    if identified and not held:
        candidates.append((last_progress + limits.idle_timeout, "idle"))
    return min(candidates) if candidates else None


class TurnBudget:
    """What all connections together may take in one loop turn: bytes read (TLS may
    add the rest of a record it already decrypted) and messages handed over.

    Bounds a turn's work (decode, validate, stage, log, answer, commit) whatever the
    number of busy peers. Bytes alone do not: the same bytes cut into the smallest
    frames are a hundred times the messages. A connection that finds the budget
    spent is owed a read first in the next turn (the loop's declined readers). The
    end of every turn renews it.
    """

    __slots__ = ("per_turn", "frames_per_turn", "remaining", "frames", "received", "sent")

    def __init__(self, per_turn: int = 64 * 1024, frames_per_turn: int = 256) -> None:
        self.per_turn = per_turn
        self.frames_per_turn = frames_per_turn
        self.remaining = per_turn
        self.frames = frames_per_turn
        self.received = 0  # bytes, all turns together: what the budget was spent on
        self.sent = 0

    def reset(self) -> None:
        self.remaining = self.per_turn
        self.frames = self.frames_per_turn

    def spend_all(self) -> None:
        """Nothing more this turn (the next turn is the checkpoint's)."""
        self.remaining = self.frames = 0
