"""`python -m bench.nodigest_reactor`: the central with its agency digests switched off.

The bench's A/B for issue 14 (ingest with digests against a central without them,
same run): the digest only counts the bets it is given and hashes none. Nothing
else changes. Never for a real lottery: its receipts would be wrong.
"""

import sys

from protocol.digest import AgencyDigest
from reactor.__main__ import main


def _count_only(self, encoded, count: int, skip: int = 0) -> None:
    self._n += count - skip


AgencyDigest.extend = _count_only
sys.exit(main())
