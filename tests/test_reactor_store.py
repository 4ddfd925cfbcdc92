"""The store's own contract, below the service: what goes in comes out, in order."""

from __future__ import annotations

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

