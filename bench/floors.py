"""The floors under the server: what decoding, validating and storing bets cost alone.

Measured in the bench's own process, in the same run as the servers, so the
server's figure can be read as a share of what its parts allow on this machine.
Both figures are per-bet CPU ceilings; the server does all of it on one core, so
its own ceiling is about `serial_floor` (1 / (1/codec + 1/store)).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from datagen import generate_bets
from reactor.store import Store

from .codec import run as run_codec

BETS_PER_COMMIT = 1_400  # what one of the central's turns stages under load (711 commits a million bets)


def store_bets_per_s(bets_total: int, durability: str, max_amount: int) -> float:
    """The Store alone: `stage_bets` of `max_amount`-bet batches, a commit every ~1,400 bets."""
    rows = [tuple(bet) for bet in generate_bets(1, bets_total)]
    with tempfile.TemporaryDirectory(prefix="lottery-floor-") as tmp:
        store = Store(Path(tmp) / "floor.db", durability)
        started = time.perf_counter()
        since_commit = 0
        for start in range(0, len(rows), max_amount):
            batch = rows[start : start + max_amount]
            store.stage_bets(1, batch)
            since_commit += len(batch)
            if since_commit >= BETS_PER_COMMIT:
                store.stage_agency(1, start + len(batch), b"", None)  # once a turn, as the central
                store.commit()
                since_commit = 0
            if store.checkpoint_due:
                store.commit()
                store.checkpoint()
        store.commit()
        elapsed = time.perf_counter() - started
        store.close()
    return bets_total / elapsed


def measure(bets_total: int, durability: str, max_amount: int) -> dict[str, float]:
    codec = run_codec(bets_total, max_amount)["decode_validate_bets_per_s"]
    store = store_bets_per_s(bets_total, durability, max_amount)
    return {"codec_bets_per_s": codec, "store_bets_per_s": store,
            "serial_floor_bets_per_s": 1 / (1 / codec + 1 / store)}
