"""The store's own contract, below the service: what goes in comes out, in order."""

from __future__ import annotations

import sqlite3

import pytest

from datagen import generate_bets
from reactor.store import Store


@pytest.mark.parametrize("rows_per_insert", [1, 3, 400])
def test_a_batch_split_over_several_inserts_is_stored_whole_and_in_order(tmp_path, rows_per_insert):
    store = Store(tmp_path / "bets.db", "off", rows_per_insert=rows_per_insert)  # as with a low variable limit
    first = [tuple(bet) for bet in generate_bets(1, 10)]
    second = [tuple(bet) for bet in generate_bets(2, 7)]
    assert store.stage_bets(1, first) == 1
    assert store.stage_bets(2, second) == 11  # the first rowid of each batch
    store.commit()
    assert list(store.iter_bets()) == [(1, *bet) for bet in first] + [(2, *bet) for bet in second]
    store.close()



def test_a_commit_that_fails_with_any_error_leaves_nothing_for_the_next_commit(tmp_path):
    """A COMMIT that raises before it runs (a bug, not SQLite's error) must not leave the
    turn's transaction open, or the next turn's COMMIT would store what was refused."""

    class CommitBreaksOnce(sqlite3.Connection):
        armed = False  # from the first staged bets on, once

        def execute(self, sql, *args):
            if sql.startswith("INSERT INTO bets") and CommitBreaksOnce.armed is False:
                CommitBreaksOnce.armed = True
            elif sql == "COMMIT" and CommitBreaksOnce.armed is True:
                CommitBreaksOnce.armed = None
                raise RuntimeError("a bug before the commit")
            return super().execute(sql, *args)

    store = Store(tmp_path / "bets.db", "off", connection_factory=CommitBreaksOnce)
    refused = [tuple(bet) for bet in generate_bets(1, 5)]
    store.stage_bets(1, refused)
    with pytest.raises(RuntimeError):
        store.commit()
    kept = [tuple(bet) for bet in generate_bets(2, 3)]
    store.stage_bets(2, kept)
    store.commit()
    assert list(store.iter_bets()) == [(2, *bet) for bet in kept]
    store.close()
