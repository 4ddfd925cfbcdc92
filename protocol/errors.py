"""The one exception type for violations of the protocol."""

from __future__ import annotations

from .messages import ErrorCode


class ProtocolError(Exception):
    """A violation of the Lottery Bet Protocol, as the peer should be told of it.

    `code` is the PROTOCOL.md error code, `message` a sentence fit to send to the
    peer in an ERROR frame, and `first` the `first` of the BETS frame it concerns
    (0 when it concerns no batch).
    """

    def __init__(self, code: ErrorCode, message: str, first: int = 0) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.first = first
