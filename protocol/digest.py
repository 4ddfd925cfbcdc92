"""The agency digest of PROTOCOL.md version 2, and the verifiable draw built on the digests.

    block_i   = enc(bet_1024(i-1)+1) || ... || enc(bet_min(1024 i, n))
    H_i       = SHA-256(block_i)
    digest(n) = SHA-256("LBP-DIGEST-1" || u32 n || H_1 || ... || H_ceil(n/1024))

`enc(bet)` is the bet exactly as inside a BETS payload. Blocks are a fixed 1,024 bets,
so the digest does not depend on batching, and a server extends it as bets arrive:
it keeps the finished blocks' H_i and a running hash of the unfinished block
(`AgencyDigest`), and after a restart needs only those plus the unfinished block's
bets (`AgencyDigest.resume`). `agency_digest` computes the same from a list of bets.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from . import wire
from .encoder import encode_bet

BLOCK_BETS = 1024
DIGEST_SIZE = wire.DIGEST_SIZE
SEED_SIZE = 32  # the verifiable draw's secret

_DOMAIN = b"LBP-DIGEST-1"
_BET_STRINGS = 4  # first_name, last_name, document, birthdate; then the u16 number


def _digest_of(n: int, block_hashes: bytes) -> bytes:
    return hashlib.sha256(_DOMAIN + wire.DIGEST_COUNT.pack(n) + block_hashes).digest()


def agency_digest(bets: Iterable) -> bytes:
    """digest(n) of `bets` (each a `Bet` or a 5-tuple in wire field order), n being their number."""
    block_hashes = bytearray()
    block = hashlib.sha256()
    n = 0
    for bet in bets:
        block.update(encode_bet(bet))
        n += 1
        if n % BLOCK_BETS == 0:
            block_hashes += block.digest()
            block = hashlib.sha256()
    if n % BLOCK_BETS:
        block_hashes += block.digest()
    return _digest_of(n, bytes(block_hashes))


def _offset_after(view: memoryview, offset: int, bets: int) -> int:
    """The offset just past `bets` wire-encoded bets that start at `offset`."""
    try:
        for _ in range(bets):
            for _ in range(_BET_STRINGS):
                offset += wire.U16.size + ((view[offset] << 8) | view[offset + 1])
            offset += wire.U16.size
    except IndexError:
        offset = len(view) + 1
    if offset > len(view):
        raise ValueError("the encoded bets are fewer than their count says")
    return offset


class DigestMark(NamedTuple):
    """An AgencyDigest's state at one moment (see `AgencyDigest.mark`)."""

    n: int
    blocks_size: int
    block: "hashlib._Hash"


class AgencyDigest:
    """Owns one agency's running digest(n): the finished blocks' H_i and the unfinished block's hash.

    The server feeds it the bets of each batch as they are on the wire (`extend`),
    so each byte is hashed once and nothing stored is read back. What a restart needs
    is `n`, `completed_blocks()` and the last `n % BLOCK_BETS` bets (`resume`).
    """

    __slots__ = ("_block", "_blocks", "_n")

    def __init__(self) -> None:
        self._n = 0
        self._blocks = bytearray()  # H_1 || H_2 || ... of the finished blocks
        self._block = hashlib.sha256()  # the unfinished block so far

    @classmethod
    def resume(cls, n: int, completed_blocks: bytes, tail: Iterable) -> AgencyDigest:
        """The digest state of `n` bets, from the H_i of its finished blocks and the bets of the unfinished one.

        `tail` is the last `n % BLOCK_BETS` bets (tuples in wire field order); they are
        encoded again with `encode_bet`. A `completed_blocks` or `tail` of the wrong
        size for `n` is a ValueError.
        """
        if n < 0:
            raise ValueError(f"a digest covers 0 or more bets, not {n}")
        blocks, in_block = divmod(n, BLOCK_BETS)
        if len(completed_blocks) != DIGEST_SIZE * blocks:
            raise ValueError(
                f"{n} bets make {blocks} finished blocks ({DIGEST_SIZE * blocks} bytes of hashes), "
                f"got {len(completed_blocks)} bytes"
            )
        tail = list(tail)
        if len(tail) != in_block:
            raise ValueError(f"{n} bets leave {in_block} in the unfinished block, got {len(tail)} tail bets")
        state = cls()
        state._n = n
        state._blocks += completed_blocks
        for bet in tail:
            state._block.update(encode_bet(bet))
        return state

    @property
    def n(self) -> int:
        """How many bets the digest covers (the `n` of digest(n))."""
        return self._n

    def extend(self, encoded: bytes | bytearray | memoryview, count: int, skip: int = 0) -> None:
        """Adds the bets of `encoded` after the first `skip` of them.

        `encoded` is a run of `count` wire-encoded bets, exactly as they follow
        `first` and `count` in a BETS payload; `skip` leading bets of it are already
        covered (a batch that overlaps what was stored). When a block ends inside the
        run (or `skip` > 0), the bets' u16 length prefixes are walked to find the
        byte offset; otherwise the run is hashed in one update.
        """
        if not 0 <= skip <= count:
            raise ValueError(f"skip must be 0 to count ({count}), not {skip}")
        with memoryview(encoded) as view:
            offset = _offset_after(view, 0, skip) if skip else 0
            remaining = count - skip
            while remaining:
                room = BLOCK_BETS - self._n % BLOCK_BETS
                if remaining < room:
                    self._block.update(view[offset:])
                    self._n += remaining
                    return
                end = len(view) if remaining == room else _offset_after(view, offset, room)
                self._block.update(view[offset:end])
                self._blocks += self._block.digest()
                self._block = hashlib.sha256()
                self._n += room
                remaining -= room
                offset = end

    def digest(self) -> bytes:
        """digest(n), 32 bytes; the running state is left as it was."""
        outer = hashlib.sha256(_DOMAIN + wire.DIGEST_COUNT.pack(self._n))
        outer.update(self._blocks)
        if self._n % BLOCK_BETS:
            outer.update(self._block.digest())  # hashlib's digest() works on a copy: the block goes on
        return outer.digest()

    def mark(self) -> "DigestMark":
        """The state now, to `rewind` to when what was added since is not kept
        (a batch the store refused, a turn whose commit failed)."""
        return DigestMark(self._n, len(self._blocks), self._block.copy())

    def rewind(self, mark: "DigestMark") -> None:
        self._n = mark.n
        del self._blocks[mark.blocks_size :]
        self._block = mark.block.copy()

    def digest_at(self, mark: "DigestMark") -> bytes:
        """digest(mark.n): what the digest was at `mark`, the running state untouched."""
        return _digest_of(mark.n, bytes(self._blocks[: mark.blocks_size])
                          + (mark.block.digest() if mark.n % BLOCK_BETS else b""))

    def completed_blocks(self, start: int = 0) -> bytes:
        """H_(start+1) || ... of the finished blocks: all of them by default.

        A store may persist them all at once, or append only the blocks finished
        since it last asked (`start` = the number it already holds).
        """
        return bytes(self._blocks[DIGEST_SIZE * start :])


# --- the verifiable draw ----------------------------------------------------------


def _checked_seed(seed: bytes) -> bytes:
    if len(seed) != SEED_SIZE:
        raise ValueError(f"a draw seed has {SEED_SIZE} bytes, not {len(seed)}")
    return seed


def commitment(seed: bytes) -> str:
    """The published commitment to `seed`: SHA-256(seed) as 64 lowercase hex characters."""
    return hashlib.sha256(_checked_seed(seed)).hexdigest()


def derive_winning_number(seed: bytes, digests: Sequence[bytes]) -> int:
    """The verifiable draw's winning number from the revealed seed and agencies 1..N's digests, in order.

    G = SHA-256(digest_1 || ... || digest_N); for c = 0, 1, ...: h = HMAC-SHA256(seed,
    G || u32 c), x = the low 14 bits of h's first two bytes (0..16383); the first x
    below 10,000 wins. Rejecting 10,000..16,383 rather than taking x mod 10,000 keeps
    every number equally likely.
    """
    _checked_seed(seed)
    for digest in digests:
        if len(digest) != DIGEST_SIZE:
            raise ValueError(f"an agency digest has {DIGEST_SIZE} bytes, not {len(digest)}")
    combined = hashlib.sha256(b"".join(digests)).digest()
    counter = 0
    while True:
        h = hmac.digest(seed, combined + wire.DRAW_COUNTER.pack(counter), "sha256")
        candidate = ((h[0] << 8) | h[1]) & 0x3FFF
        if candidate < 10_000:
            return candidate
        counter += 1
