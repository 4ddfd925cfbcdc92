"""Cutting work into frames that fit: bets into BETS batches, documents into WINNERS frames."""

from __future__ import annotations

from typing import Iterable, Iterator

from . import wire
from .messages import BETS_FRAME_OVERHEAD, MAX_FRAME_SIZE, Bet, Winners, bet_wire_size

# header, type, `final` and `count`
_WINNERS_FRAME_OVERHEAD = wire.FRAME_HEAD.size + wire.WINNERS_HEAD.size


def pack_batches(bets: Iterable[Bet], max_amount: int) -> Iterator[list[Bet]]:
    """Cuts `bets` into batches of exactly `max_amount`, the last one excepted.

    A batch holds fewer only when one more bet would make its BETS frame exceed
    8192 bytes; the bet that did not fit opens the next batch. So the cut depends
    only on the input and `max_amount`. A bet too large for any frame is a
    ValueError (validated bets never are: at most 548 bytes).
    """
    if max_amount < 1:
        raise ValueError("max_amount must be at least 1")
    batch: list[Bet] = []
    size = BETS_FRAME_OVERHEAD
    for bet in bets:
        bet_size = bet_wire_size(bet)
        if BETS_FRAME_OVERHEAD + bet_size > MAX_FRAME_SIZE:
            raise ValueError(f"a bet of {bet_size} bytes cannot fit in any frame")
        if batch and (len(batch) == max_amount or size + bet_size > MAX_FRAME_SIZE):
            yield batch
            batch, size = [], BETS_FRAME_OVERHEAD
        batch.append(bet)
        size += bet_size
    if batch:
        yield batch


def split_winners(documents: Iterable[str]) -> list[Winners]:
    """The WINNERS frames answering a query: as many as the documents need, the last final.

    No documents is one empty final frame.
    """
    frames: list[Winners] = []
    chunk: list[str] = []
    size = _WINNERS_FRAME_OVERHEAD
    for document in documents:
        document_size = wire.U16.size + len(document.encode())
        if chunk and size + document_size > MAX_FRAME_SIZE:
            frames.append(Winners(tuple(chunk), final=False))
            chunk, size = [], _WINNERS_FRAME_OVERHEAD
        chunk.append(document)
        size += document_size
    frames.append(Winners(tuple(chunk), final=True))
    return frames
