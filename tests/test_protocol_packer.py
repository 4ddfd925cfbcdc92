"""The batch packer cuts deterministic batches that always fit a frame."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocol as p
from tests.strategies import valid_bets

SHORT = p.Bet("Ana", "Gómez", "12345678", "1990-01-01", 7)
LONG = p.Bet("😀" * 64, "😀" * 64, "1" * 16, "1990-01-01", 7)  # 548 bytes: the largest valid bet


def sizes(bets, max_amount):
    return [len(batch) for batch in p.pack_batches(bets, max_amount)]


@pytest.mark.parametrize("max_amount", [10, 64, 99])
@pytest.mark.parametrize("rows", [16, 21, 64, 99])
def test_short_rows_give_exactly_max_amount_per_batch_but_the_last(max_amount, rows):
    got = sizes([SHORT] * rows, max_amount)
    assert sum(got) == rows
    assert all(size == max_amount for size in got[:-1])
    assert 1 <= got[-1] <= max_amount


def test_a_batch_takes_as_many_bets_as_fit_when_the_frame_would_overflow():
    per_frame = (p.MAX_FRAME_SIZE - p.BETS_FRAME_OVERHEAD) // p.bet_wire_size(LONG)
    got = sizes([LONG] * 100, max_amount=1000)
    assert got[:-1] == [per_frame] * (len(got) - 1)
    assert sum(got) == 100
    for batch in p.pack_batches([LONG] * 100, 1000):
        assert len(p.encode(p.Bets(first=1, bets=tuple(batch)))) <= p.MAX_FRAME_SIZE


@given(st.lists(valid_bets, max_size=300), st.integers(1, 300))
def test_packed_batches_fit_follow_the_rule_and_decode_to_the_bets_in_order(bets, max_amount):
    decoder = p.FrameDecoder(p.Role.SERVER)
    first = 1
    decoded = []
    batches = list(p.pack_batches(bets, max_amount))
    for index, batch in enumerate(batches):
        data = p.encode(p.Bets(first=first, bets=tuple(batch)))
        assert len(data) <= p.MAX_FRAME_SIZE
        if len(batch) < max_amount and index < len(batches) - 1:
            # cut short only because the next bet would not have fit
            following = batches[index + 1][0]
            assert len(data) + p.bet_wire_size(following) > p.MAX_FRAME_SIZE
        decoder.receive_data(data)
        message = decoder.next_message()
        assert message.first == first
        decoded.extend(message.bets)
        first += len(batch)
    assert decoded == bets


def test_the_packer_reads_its_input_lazily():
    def endless():
        while True:
            yield SHORT

    batches = p.pack_batches(endless(), 5)
    assert [len(next(batches)) for _ in range(3)] == [5, 5, 5]


def test_bad_arguments():
    with pytest.raises(ValueError):
        list(p.pack_batches([SHORT], 0))
    with pytest.raises(ValueError):
        list(p.pack_batches([p.Bet("x" * 9000, "b", "1", "1990-01-01", 1)], 10))


def test_winners_are_split_into_frames_that_fit_and_the_last_is_final():
    documents = [f"{n:016d}" for n in range(2000)]
    frames = p.split_winners(documents)
    assert len(frames) > 1
    assert [f.final for f in frames] == [False] * (len(frames) - 1) + [True]
    assert [d for f in frames for d in f.documents] == documents
    assert all(len(p.encode(f)) <= p.MAX_FRAME_SIZE for f in frames)
    assert p.split_winners([]) == [p.Winners(documents=(), final=True)]
