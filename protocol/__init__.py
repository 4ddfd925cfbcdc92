"""The Lottery Bet Protocol, versions 1 and 2, without I/O: bytes in, messages out.

The one implementation of docs/PROTOCOL.md that the server, the client and the tests
share: messages, codec, bet rules, batch packer, and version 2's agency digest and
verifiable draw. Nothing here touches a socket.
"""

from .decoder import NEED_DATA, PEER_CLOSED, FrameDecoder, Role, decode_bets_payload
from .digest import (
    BLOCK_BETS,
    DIGEST_SIZE,
    SEED_SIZE,
    AgencyDigest,
    agency_digest,
    commitment,
    derive_winning_number,
)
from .encoder import encode, encode_bet
from .errors import ProtocolError
from .messages import (
    BETS_FRAME_OVERHEAD,
    MAX_FRAME_LENGTH,
    MAX_FRAME_SIZE,
    SUPPORTED_VERSIONS,
    Ack,
    Bet,
    Bets,
    Done,
    DoneAck,
    Error,
    ErrorCode,
    FrameType,
    Hello,
    Message,
    Welcome,
    Winners,
    WinnersQuery,
    bet_wire_size,
)
from .packer import pack_batches, split_winners
from .validation import BetProblem, bet_problem, first_invalid_bet, utc_today

__all__ = [
    "BETS_FRAME_OVERHEAD",
    "BLOCK_BETS",
    "DIGEST_SIZE",
    "MAX_FRAME_LENGTH",
    "MAX_FRAME_SIZE",
    "NEED_DATA",
    "PEER_CLOSED",
    "SEED_SIZE",
    "SUPPORTED_VERSIONS",
    "Ack",
    "AgencyDigest",
    "Bet",
    "BetProblem",
    "Bets",
    "Done",
    "DoneAck",
    "Error",
    "ErrorCode",
    "FrameDecoder",
    "FrameType",
    "Hello",
    "Message",
    "ProtocolError",
    "Role",
    "Welcome",
    "Winners",
    "WinnersQuery",
    "agency_digest",
    "bet_problem",
    "bet_wire_size",
    "commitment",
    "decode_bets_payload",
    "derive_winning_number",
    "encode",
    "encode_bet",
    "first_invalid_bet",
    "pack_batches",
    "split_winners",
    "utc_today",
]
