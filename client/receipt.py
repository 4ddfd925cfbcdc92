"""The agency's own side of a receipt: the digest of its bets (PROTOCOL.md version 2).

The digest covers bets, not rows: the bets the client sends, numbered as it sends
them, after its row rules (a byte order mark, spaces around fields, skipped invalid
rows). So it is computed over the very stream of bets the client would send, the
same way by the agency on every run, by `python -m client digest`, and by the
central's audit from the stored rows.
"""

from __future__ import annotations

from itertools import islice
from typing import Iterator

from protocol import BLOCK_BETS, AgencyDigest, Bet, encode_bet


def digest_bets(state: AgencyDigest, bets: Iterator[Bet], limit: int | None = None) -> int:
    """Adds the next bets of the iterator `bets` to `state`, at most `limit` of them
    (all when None), and returns how many it added.

    Bets are taken up to the end of the digest's current block and hashed in one
    update, so memory holds one block's encodings, whatever the file's size. The
    iterator is left just past the last bet added: a caller can send the rest.
    """
    added = 0
    while limit is None or added < limit:
        room = BLOCK_BETS - state.n % BLOCK_BETS
        if limit is not None:
            room = min(room, limit - added)
        encoded = [encode_bet(bet) for bet in islice(bets, room)]
        if encoded:
            state.extend(b"".join(encoded), len(encoded))
            added += len(encoded)
        if len(encoded) < room:
            break  # the bets ran out
    return added
