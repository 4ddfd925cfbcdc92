"""The floor under the central: what one core does with bets when there is no I/O and no loop.

One pass over pre-encoded BETS frames that calls the codec and the store the way
the central calls them:
  - the connection feeds its `FrameDecoder` RECV_SIZE bytes at a time and takes
    every complete message (reactor/connection.py);
  - `Lottery.take_batch` validates the whole batch with `first_invalid_bet`,
    slices what is new and stages it with `Store.stage_bets` (reactor/service.py);
  - with `digest=True`, each agency's `AgencyDigest` is extended with the batch's
    wire bytes (`Bets.encoded`), as the central does once it keeps receipts
    (issue 14);
  - the turn's end commits (`Store.commit`) once per `commit_every` bets, and the
    WAL checkpoint runs when the store says it is due.
Each phase is timed on its own, so the floor's split per bet can be set beside the
central's profile (bench/profile.py). The frames are spread over several agencies
in turn, as the central sees them under load.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import protocol as p
from datagen import generate_bets
from reactor.connection import RECV_SIZE
from reactor.store import Store

# Bets per commit when the central's own cadence is not at hand: what one of its
# turns staged under load before its commits spanned turns. `python -m bench` and
# `make profile` pass the central's own cadence from the same run instead.
BETS_PER_COMMIT = 1_400
AGENCIES = 50
# Bets a floor measurement takes: long enough (a few seconds) that a moment of the
# machine's noise does not decide it.
FLOOR_BETS = 500_000
PHASES = ("decode", "validate", "digest", "insert", "commit", "checkpoint")


def encoded_stream(bets_total: int, max_amount: int, agencies: int = AGENCIES) -> tuple[bytes, list[int]]:
    """BETS frames of `max_amount` bets, agency by agency in turn, as one byte stream, and each frame's agency."""
    per_agency = -(-bets_total // agencies)
    frames: list[tuple[int, int, bytes]] = []
    made = 0
    for agency in range(1, agencies + 1):
        count = min(per_agency, bets_total - made)
        if count <= 0:
            break
        first = 1
        for index, batch in enumerate(p.pack_batches(generate_bets(agency, count), max_amount)):
            frames.append((index, agency, p.encode(p.Bets(first, tuple(batch)))))
            first += len(batch)
        made += count
    frames.sort(key=lambda frame: (frame[0], frame[1]))  # round robin over the agencies
    return b"".join(frame for _, _, frame in frames), [agency for _, agency, _ in frames]


def measure(bets_total: int, durability: str, max_amount: int, digest: bool = False,
            commit_every: int = BETS_PER_COMMIT) -> dict:
    """The floor in bets/s, and seconds per bet of each phase (`PHASES`)."""
    stream, agencies = encoded_stream(bets_total, max_amount)
    spent = dict.fromkeys(PHASES, 0.0)
    staged = dict.fromkeys(set(agencies), 0)
    digests = {agency: p.AgencyDigest() for agency in staged} if digest else {}
    clock = time.perf_counter
    with tempfile.TemporaryDirectory(prefix="lottery-floor-") as tmp:
        store = Store(Path(tmp) / "floor.db", durability)
        decoder = p.FrameDecoder(p.Role.SERVER)
        frame_index = since_commit = stored = 0
        touched: set[int] = set()
        written = dict.fromkeys(staged, 0)  # bets whose agencies row the store holds
        started = clock()
        for start in range(0, len(stream), RECV_SIZE):
            t0 = clock()
            decoder.receive_data(stream[start : start + RECV_SIZE])
            batches = list(decoder.messages())
            t1 = clock()
            spent["decode"] += t1 - t0
            for batch in batches:
                agency = agencies[frame_index]
                frame_index += 1
                t0 = clock()
                if p.first_invalid_bet(batch.bets, p.utc_today()) is not None:
                    raise AssertionError("generated bets must be valid")
                skip = staged[agency] + 1 - batch.first
                new_bets = batch.bets[skip:]
                t1 = clock()
                if digest:
                    digests[agency].extend(batch.encoded, batch.count, skip)
                t2 = clock()
                store.stage_bets(agency, new_bets)
                t3 = clock()
                staged[agency] = batch.last
                touched.add(agency)
                spent["validate"] += t1 - t0
                spent["digest"] += t2 - t1
                spent["insert"] += t3 - t2
                since_commit += len(new_bets)
                stored += len(new_bets)
                if since_commit >= commit_every:
                    since_commit = 0
                    _end_turn(store, spent, touched, staged, digests, written)
        _end_turn(store, spent, touched, staged, digests, written)
        elapsed = clock() - started
        store.close()
    if stored != bets_total:
        raise AssertionError(f"the floor stored {stored} of {bets_total} bets")
    return {
        "bets": bets_total,
        "durability": durability,
        "digest": digest,
        "commit_every": commit_every,
        "bets_per_s": bets_total / elapsed,
        "us_per_bet": {phase: 1e6 * seconds / bets_total for phase, seconds in spent.items()},
    }


def _end_turn(store: Store, spent: dict, touched: set, staged: dict, digests: dict, written: dict) -> None:
    """The central's end of a turn, as far as the store goes: each agency's progress
    (once a turn, with its digest's finished blocks), the commit, then the checkpoint
    when due."""
    t0 = time.perf_counter()
    for agency in touched:
        blocks = digests[agency].completed_blocks(written[agency] // p.BLOCK_BETS) if agency in digests else b""
        store.stage_agency(agency, staged[agency], blocks, None)
        written[agency] = staged[agency]
    touched.clear()
    store.commit()
    t1 = time.perf_counter()
    spent["commit"] += t1 - t0
    if store.checkpoint_due:
        store.checkpoint()
        spent["checkpoint"] += time.perf_counter() - t1
