"""Hypothesis strategies for protocol values, shared by the test modules."""

from __future__ import annotations

from datetime import date

from hypothesis import strategies as st

import protocol as p

U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFF_FFFF)

# Any text the wire can carry: includes accents, 4-byte UTF-8 and control characters.
wire_text = st.text(max_size=40)

valid_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=64
)
valid_bets = st.builds(
    p.Bet,
    first_name=valid_names,
    last_name=valid_names,
    document=st.text(alphabet="0123456789", min_size=1, max_size=16),
    birthdate=st.dates(date(1900, 1, 1), date(2020, 12, 31)).map(date.isoformat),
    number=st.integers(0, 9999),
)
wire_bets = st.builds(p.Bet, wire_text, wire_text, wire_text, wire_text, U16)

digests = st.binary(min_size=32, max_size=32)

client_messages = st.one_of(
    st.builds(p.Hello, agency=U32, token=wire_text, version=st.sampled_from(p.SUPPORTED_VERSIONS)),
    st.builds(p.Bets, first=st.integers(1, 0xFFFF_FFFF), bets=st.lists(wire_bets, min_size=1, max_size=8).map(tuple)),
    st.just(p.Done()),
    st.just(p.WinnersQuery()),
)
# Server messages that are the same in every version.
_common_server_messages = [
    st.builds(p.Ack, first=st.integers(1, 0xFFFF_FFFF), count=st.integers(1, 0xFFFF)),
    st.builds(p.Winners, documents=st.lists(wire_text, max_size=10).map(tuple), final=st.booleans()),
    st.builds(p.Error, code=st.sampled_from(list(p.ErrorCode)), message=wire_text, first=U32),
]
server_messages = st.one_of(
    st.builds(p.Welcome, committed=U32, agency_done=st.booleans(), draw_done=st.booleans()),
    st.just(p.DoneAck()),
    *_common_server_messages,
)
server_messages_v2 = st.one_of(
    st.builds(p.Welcome, committed=U32, agency_done=st.booleans(), draw_done=st.booleans(), digest=digests),
    st.builds(p.DoneAck, committed=U32, digest=digests),
    *_common_server_messages,
)
SERVER_MESSAGES = {1: server_messages, 2: server_messages_v2}
