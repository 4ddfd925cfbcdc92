"""The agency digest and the verifiable draw, against references written here from PROTOCOL.md.

The references encode bets and hash blocks themselves (struct, hashlib, hmac): they
call nothing of `protocol.digest`, so a mistake there cannot hide in both.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocol as p
from tests.strategies import wire_bets

BOUNDARY_SIZES = [0, 1, 1023, 1024, 1025, 2048]


# --- references, straight from PROTOCOL.md version 2 -------------------------------


def enc(bet) -> bytes:
    """`str first_name`, `str last_name`, `str document`, `str birthdate`, `u16 number`."""
    out = b""
    for text in bet[:4]:
        raw = text.encode("utf-8")
        out += struct.pack(">H", len(raw)) + raw
    return out + struct.pack(">H", bet[4])


def reference_block_hashes(bets) -> list[bytes]:
    return [hashlib.sha256(b"".join(enc(bet) for bet in bets[i : i + 1024])).digest() for i in range(0, len(bets), 1024)]


def reference_digest(bets) -> bytes:
    n = len(bets)
    return hashlib.sha256(b"LBP-DIGEST-1" + struct.pack(">I", n) + b"".join(reference_block_hashes(bets))).digest()


def reference_candidates(seed: bytes, digests: list[bytes]):
    """Every x the draw tries, in order, up to and including the winner."""
    g = hashlib.sha256(b"".join(digests)).digest()
    c = 0
    while True:
        mac = hmac.new(seed, g + c.to_bytes(4, "big"), hashlib.sha256).digest()
        x = int.from_bytes(mac[:2], "big") % 16384
        yield x
        if x < 10000:
            return
        c += 1


# --- bet lists of any size, cheaply -----------------------------------------------


SIZES = st.one_of(st.sampled_from(BOUNDARY_SIZES), st.integers(0, 2100))


@st.composite
def bet_lists(draw):
    """A block-boundary or random number of bets, cycling through a few drawn ones; the number makes each distinct."""
    size = draw(SIZES)
    pool = draw(st.lists(wire_bets, min_size=1, max_size=6))
    return [p.Bet(*pool[i % len(pool)][:4], (i * 7919) & 0xFFFF) for i in range(size)]


def region(bets) -> bytes:
    """The bets as they follow `first` and `count` in a BETS payload."""
    return b"".join(enc(bet) for bet in bets)


# --- agency_digest ----------------------------------------------------------------


def test_the_digest_of_no_bets_is_the_domain_and_a_zero_count():
    assert p.agency_digest([]) == hashlib.sha256(b"LBP-DIGEST-1\x00\x00\x00\x00").digest()
    assert p.AgencyDigest().digest() == p.agency_digest([])
    assert p.BLOCK_BETS == 1024 and p.DIGEST_SIZE == 32


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_the_digest_at_block_boundaries(size):
    bets = [p.Bet("Ana", "Núñez 😀", str(i), "1990-01-01", i % 10000) for i in range(size)]
    assert p.agency_digest(bets) == reference_digest(bets)
    assert p.agency_digest(tuple(bet) for bet in bets) == reference_digest(bets)  # any iterable of tuples


@given(bet_lists())
def test_the_digest_equals_the_reference(bets):
    assert p.agency_digest(bets) == reference_digest(bets)


def test_the_digest_depends_on_every_field_and_the_order():
    bets = [p.Bet("Ana", "B", "1", "1990-01-01", n) for n in range(3)]
    digests = {reference_digest(bets)}
    for changed in (
        [bets[1], bets[0], bets[2]],
        [*bets[:2], bets[2]._replace(number=3)],
        [*bets[:2], bets[2]._replace(first_name="Anb")],
        bets[:2],
    ):
        assert p.agency_digest(changed) == reference_digest(changed)
        digests.add(p.agency_digest(changed))
    assert len(digests) == 5


# --- AgencyDigest: any batching, any overlap, any resume point -----------------------


@st.composite
def batches(draw, n):
    """Batches as a server meets them: (start, end) 0-based, each starting at or before what it holds."""
    out, held = [], 0
    while held < n:
        overlap = draw(st.integers(0, min(held, 40)))
        start = held - overlap
        end = min(n, start + draw(st.one_of(st.integers(1, 200), st.integers(1, 2100))))
        out.append((start, end))
        held = max(held, end)
    return out


@given(st.data())
def test_the_incremental_digest_equals_the_reference_for_any_batching_and_skip(data):
    bets = data.draw(bet_lists())
    encoded = [enc(bet) for bet in bets]
    block_hashes = reference_block_hashes(bets)
    plan = data.draw(batches(len(bets)))
    look_after = data.draw(st.integers(0, max(0, len(plan) - 1)))  # one point to compare the whole digest
    state = p.AgencyDigest()
    for index, (start, end) in enumerate(plan):
        held = state.n
        state.extend(b"".join(encoded[start:end]), end - start, skip=min(held - start, end - start))
        assert state.n == max(held, end)
        assert state.completed_blocks() == b"".join(block_hashes[: state.n // 1024])
        if index == look_after:
            assert state.digest() == reference_digest(bets[: state.n])
            assert state.digest() == reference_digest(bets[: state.n])  # digest() leaves the state alone
    assert state.n == len(bets)
    assert state.digest() == reference_digest(bets)


@pytest.mark.parametrize(
    "plan",
    [
        [(0, 1024), (1024, 2048)],  # batches that end exactly on block boundaries
        [(0, 1023), (1023, 1024), (1024, 1025)],
        [(0, 2049)],  # one run across two boundaries
        [(0, 1000), (990, 1100)],  # a skip, then a boundary inside the new part
        [(0, 1030), (1020, 1030), (1030, 1031)],  # a batch that is all old
        [(0, 1020), (1010, 1030)],  # the skip ends before the boundary, the run crosses it
    ],
    ids=repr,
)
def test_the_incremental_digest_at_chosen_boundaries(plan):
    bets = [p.Bet("Zoë", "Ñ", str(i), "1990-01-01", i % 10000) for i in range(plan[-1][1])]
    state = p.AgencyDigest()
    for start, end in plan:
        state.extend(region(bets[start:end]), end - start, skip=min(state.n - start, end - start))
        assert state.digest() == reference_digest(bets[:end])


@given(st.data())
def test_a_resumed_digest_goes_on_like_the_one_never_stopped(data):
    bets = data.draw(bet_lists())
    at = data.draw(st.integers(0, len(bets)))
    finished = at - at % 1024
    state = p.AgencyDigest.resume(at, b"".join(reference_block_hashes(bets[:finished])), bets[finished:at])
    assert state.n == at
    assert state.digest() == reference_digest(bets[:at])
    for start, end in data.draw(batches(len(bets) - at)):
        state.extend(region(bets[at + start : at + end]), end - start, skip=min(state.n - at - start, end - start))
    assert state.digest() == reference_digest(bets)


def test_resume_takes_tuples_as_the_store_gives_them_back():
    bets = [("Ana", "B", str(i), "1990-01-01", i) for i in range(1500)]
    blocks = b"".join(reference_block_hashes(bets[:1024]))
    assert p.AgencyDigest.resume(1500, blocks, iter(bets[1024:])).digest() == reference_digest(bets)


@pytest.mark.parametrize(
    "n, blocks, tail",
    [
        (1024, b"", []),  # a finished block missing
        (1023, bytes(32), [("a", "b", "1", "1990-01-01", 1)] * 1023),  # a block too many
        (5, b"", [("a", "b", "1", "1990-01-01", 1)] * 4),  # the tail one short
        (1025, bytes(32), []),  # the tail missing
        (-1, b"", []),
    ],
)
def test_resume_refuses_state_that_does_not_add_up(n, blocks, tail):
    with pytest.raises(ValueError):
        p.AgencyDigest.resume(n, blocks, tail)


def test_completed_blocks_from_a_start_gives_only_the_newer_ones():
    bets = [("Ana", "B", str(i), "1990-01-01", i % 10000) for i in range(3 * 1024 + 5)]
    state = p.AgencyDigest()
    state.extend(region(bets), len(bets))
    hashes = reference_block_hashes(bets)[:3]
    assert state.completed_blocks() == b"".join(hashes)
    assert state.completed_blocks(2) == hashes[2]
    assert state.completed_blocks(3) == b""


def test_extend_takes_the_bets_region_of_a_payload_as_a_memoryview():
    bets = [p.Bet("Ana", "B", str(i), "1990-01-01", i) for i in range(1030)]
    state = p.AgencyDigest()
    for start in range(0, len(bets), 100):
        batch = bets[start : start + 100]
        payload = bytearray(p.encode(p.Bets(first=start + 1, bets=tuple(batch)))[5:])
        state.extend(memoryview(payload)[6:], len(batch))
        payload.clear()  # extend let go of the buffer: it can change size again
    assert state.digest() == reference_digest(bets)


def test_a_server_digests_decoded_batches_from_what_they_carry():
    bets = [p.Bet("Zoë", "Núñez", str(i), "1990-01-01", i % 10000) for i in range(2100)]
    decoder = p.FrameDecoder(p.Role.SERVER)
    first = 1
    for chunk in p.pack_batches(bets, 150):
        decoder.receive_data(p.encode(p.Bets(first=first, bets=tuple(chunk))))
        first += len(chunk)
    state = p.AgencyDigest()
    for batch in decoder.messages():
        state.extend(batch.encoded, batch.count)
    assert state.digest() == reference_digest(bets)


@pytest.mark.parametrize("count, skip", [(3, 4), (3, -1)])
def test_extend_refuses_a_skip_outside_the_run(count, skip):
    with pytest.raises(ValueError):
        p.AgencyDigest().extend(region([("a", "b", "1", "1990-01-01", 1)] * 3), count, skip)


def test_extend_refuses_a_run_shorter_than_its_count_where_it_walks_it():
    run = region([("a", "b", "1", "1990-01-01", 1)] * 3)
    with pytest.raises(ValueError):
        p.AgencyDigest().extend(run, 5, skip=4)
    with pytest.raises(ValueError):
        p.AgencyDigest().extend(run, 2000)  # a block boundary at bet 1024 is past the end


# --- the verifiable draw ----------------------------------------------------------

AGENCY_DIGESTS = [hashlib.sha256(b"agency %d" % k).digest() for k in range(1, 6)]
# Found by trying sha256("seed 0"), sha256("seed 1"), ...: the first seed whose draw
# rejects its first candidates (x = 10239, 15531, 15722) and wins at c = 3.
SEED_NEEDING_C3 = hashlib.sha256(b"seed 2").digest()


def test_commitment_is_the_lowercase_hex_of_the_seeds_sha256():
    seed = bytes(range(32))
    assert p.commitment(seed) == hashlib.sha256(seed).hexdigest()
    assert p.commitment(seed) == p.commitment(seed).lower() and len(p.commitment(seed)) == 64


def test_a_draw_that_rejects_candidates_goes_on_counting():
    candidates = list(reference_candidates(SEED_NEEDING_C3, AGENCY_DIGESTS))
    assert candidates == [10239, 15531, 15722, 1178]
    assert p.derive_winning_number(SEED_NEEDING_C3, AGENCY_DIGESTS) == 1178


@given(st.binary(min_size=32, max_size=32), st.lists(st.binary(min_size=32, max_size=32), max_size=8))
def test_the_draw_equals_the_reference(seed, digests):
    expected = list(reference_candidates(seed, digests))[-1]
    assert p.derive_winning_number(seed, digests) == expected
    assert 0 <= expected <= 9999


def test_the_draw_depends_on_the_agencies_order():
    reordered = [AGENCY_DIGESTS[1], AGENCY_DIGESTS[0], *AGENCY_DIGESTS[2:]]
    seeds = [hashlib.sha256(b"order %d" % i).digest() for i in range(20)]
    assert any(p.derive_winning_number(s, AGENCY_DIGESTS) != p.derive_winning_number(s, reordered) for s in seeds)


@pytest.mark.parametrize("seed, digests", [(bytes(31), AGENCY_DIGESTS), (bytes(32), [bytes(31)])])
def test_the_draw_refuses_a_seed_or_digest_of_the_wrong_size(seed, digests):
    with pytest.raises(ValueError):
        p.derive_winning_number(seed, digests)


@given(st.lists(st.integers(1, 700), min_size=1, max_size=8), st.integers(0, 7), st.integers(0, 7))
def test_a_digest_rewinds_to_any_mark_and_tells_the_digest_there(batch_sizes, kept, rewound):
    """What a store refused or a failed commit dropped leaves the digest as it was."""
    bets = [p.Bet("Ana", "G", str(i), "1990-01-01", i % 10_000) for i in range(sum(batch_sizes))]
    state = p.AgencyDigest()
    marks, offset = [], 0
    for size in batch_sizes:
        marks.append(state.mark())
        chunk = bets[offset: offset + size]
        state.extend(b"".join(map(p.encode_bet, chunk)), size)
        offset += size
    at = min(kept, len(marks) - 1)
    mark = marks[at]
    assert state.digest_at(mark) == p.agency_digest(bets[: mark.n])
    state.rewind(mark)
    assert state.n == mark.n and state.digest() == p.agency_digest(bets[: mark.n])
    extra = bets[mark.n: mark.n + rewound * 150]
    state.extend(b"".join(map(p.encode_bet, extra)), len(extra))  # and goes on from there
    assert state.digest() == p.agency_digest(bets[: mark.n + len(extra)])
