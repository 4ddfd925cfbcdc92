"""Every fixed-size layout of PROTOCOL.md, written once: the encoder and the decoder both use these.

Each name is a run of fixed-size fields as PROTOCOL.md lists them, big-endian. Strings
(`u16 n` then n bytes) and lists are variable and are built around these, except a
bet: `bet_layout` gives the one layout of a bet whose strings have given sizes.
"""

from __future__ import annotations

import struct

DIGEST_SIZE = 32  # a SHA-256 digest, as version 2 carries it

U16 = struct.Struct(">H")  # a string's length, a bet's number
U32 = struct.Struct(">I")  # a frame's `len`

FRAME_HEAD = struct.Struct(">IB")  # len, type
HELLO_VERSION = struct.Struct(">H")  # read alone first: the rest of a HELLO depends on it
HELLO_HEAD = struct.Struct(">HI")  # version, agency; then str token
BETS_HEAD = struct.Struct(">IH")  # first, count; then count bets
WELCOME = struct.Struct(">IB")  # committed, flags
WELCOME_V2 = struct.Struct(f">IB{DIGEST_SIZE}s")  # committed, flags, digest(committed)
ACK = struct.Struct(">IH")  # first, count
DONE_ACK_V2 = struct.Struct(f">I{DIGEST_SIZE}s")  # committed, digest(committed); version 1 is empty
WINNERS_HEAD = struct.Struct(">BH")  # final, count; then count x str document
ERROR_HEAD = struct.Struct(">HI")  # code, first; then str message
# Not in frames, but PROTOCOL.md's hash inputs (version 2):
DIGEST_COUNT = struct.Struct(">I")  # u32 n inside digest(n)
DRAW_COUNTER = struct.Struct(">I")  # u32 c of the verifiable draw


# A bet is `str first_name, str last_name, str document, str birthdate, u16 number`.
# Its layout depends only on the four strings' sizes, and real data repeats a few
# hundred of them, so each is built once: the decoder reads the four sizes, then
# unpacks the bet in one call instead of slicing field by field. The cache is bounded
# whatever sizes peers send.
BET_LAYOUTS: dict[tuple[int, int, int, int], struct.Struct] = {}  # written only by bet_layout
MAX_BET_LAYOUTS = 4096


def bet_layout(sizes: tuple[int, int, int, int]) -> struct.Struct:
    """The layout of a bet whose four strings have these byte sizes, for reading.

    It unpacks to (first_name, last_name, document, birthdate) as bytes and the
    number; each string's u16 size is skipped (it was read to choose the layout).
    """
    layout = BET_LAYOUTS.get(sizes)
    if layout is None:
        if len(BET_LAYOUTS) >= MAX_BET_LAYOUTS:
            BET_LAYOUTS.clear()
        layout = BET_LAYOUTS[sizes] = struct.Struct(">2x{}s2x{}s2x{}s2x{}sH".format(*sizes))
    return layout
