"""The lottery service against a simple model, driven by hypothesis.

The service runs in-process with a fake connection (it records the bytes written)
and a fake loop (a turn runs the ready callbacks, then the end-of-turn commit).
Any sequence of HELLO, BETS (valid, invalid, duplicate, overlapping, gapped,
several in one turn), DONE, WINNERS_QUERY, reconnects and a disk that fills up
must leave the store equal to the model and answer each request as the model says.
"""

from __future__ import annotations


from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import protocol as p
from reactor.service import Lottery, LotteryConfig
from reactor.store import Store
from tests.faults import FlagConnection
from tests.harness import FakeConnection, FakeLoop

AGENCIES = 3
WINNING = 7574
E = p.ErrorCode


def bet(agency: int, seq: int, valid: bool = True) -> p.Bet:
    return p.Bet("Ana", "Gómez", f"{agency:02d}{seq:06d}", "1990-01-01" if valid else "1990-02-30",
                 WINNING if seq % 5 == 0 else seq % 1000)


class LotteryMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        # The store's own connection, failing on purpose through its seam: a full disk
        # fails the statements that write, failing commits roll back and raise.
        self.faults = type("Faults", (FlagConnection,), {})
        self.store = Store(":memory:", connection_factory=self.faults)
        self.loop = FakeLoop()
        self.lottery = Lottery(self.store, LotteryConfig(agencies=AGENCIES, winning_number=WINNING), self.loop)
        self.sessions: dict[int, tuple] = {}  # agency -> (session, connection)
        self.stored = {a: 0 for a in range(1, AGENCIES + 1)}
        self.done = {a: False for a in range(1, AGENCIES + 1)}

    def turn(self) -> None:
        self.loop.run_ready()
        self.lottery.end_of_turn()

    def settle(self) -> None:
        """Turns until the draw (if due) has finished its slices."""
        for _ in range(20):
            self.turn()
            if not self.loop.ready:
                return

    def reading_agency(self, data) -> int | None:
        """An agency whose session reads (a held one reads nothing more), if any."""
        reading = sorted(a for a, (session, _) in self.sessions.items() if not session.holds_query)
        return data.draw(st.sampled_from(reading)) if reading else None

    def send(self, agency: int, *messages) -> list:
        session, connection = self.sessions[agency]
        for message in messages:
            session.message_received(message)
        self.settle()
        return connection.replies()

    def drawn(self) -> bool:
        return all(self.done.values())

    def winners(self, agency: int) -> tuple[str, ...]:
        return tuple(bet(agency, s).document for s in range(1, self.stored[agency] + 1) if s % 5 == 0)

    # --- rules ---------------------------------------------------------------------------
    @rule(agency=st.integers(1, AGENCIES))
    def connect(self, agency: int) -> None:
        older = self.sessions.get(agency)
        connection = FakeConnection()
        session = self.lottery.new_session(connection)
        self.sessions[agency] = (session, connection)
        assert self.send(agency, p.Hello(agency)) == [
            p.Welcome(self.stored[agency], self.done[agency], self.drawn())
        ]
        if older is not None:
            replies = older[1].replies()
            assert replies[-1].code is E.SESSION_REPLACED and older[1].closed

    @precondition(lambda self: self.sessions)
    @rule(
        data=st.data(),
        batches=st.lists(st.tuples(st.integers(-6, 3), st.integers(1, 12), st.booleans()), min_size=1, max_size=4),
    )
    def bets(self, data, batches) -> None:
        agency = self.reading_agency(data)
        if agency is None:
            return
        expected, staged, messages = [], self.stored[agency], []
        for offset, count, valid in batches:
            first = max(1, staged + 1 + offset)
            last = first + count - 1
            message = p.Bets(first, tuple(bet(agency, s, valid or s != last) for s in range(first, last + 1)))
            messages.append(message)
            if not valid:
                expected.append((E.INVALID_BET, first))
            elif first > staged + 1:
                expected.append((E.SEQUENCE_GAP, first))
            elif last <= staged:
                expected.append(p.Ack(first, count))
            elif self.done[agency]:
                expected.append((E.AGENCY_CLOSED, first))
            elif self.faults.disk_full:
                expected.append((E.STORAGE_FAILED, first))
            else:
                staged = last
                expected.append(p.Ack(first, count))
        if self.faults.fail_commits:  # every reply that waited for the turn's commit fails instead
            durable = self.stored[agency]
            expected = [
                (E.STORAGE_FAILED, e.first) if isinstance(e, p.Ack) and e.first + e.count - 1 > durable else e
                for e in expected
            ]
            staged = durable
        replies = self.send(agency, *messages)
        got = [(r.code, r.first) if isinstance(r, p.Error) else r for r in replies]
        assert got == expected
        self.stored[agency] = staged

    @precondition(lambda self: self.sessions)
    @rule(data=st.data())
    def done_message(self, data) -> None:
        agency = self.reading_agency(data)
        if agency is None:
            return
        held = [a for a, (s, _) in self.sessions.items() if s.holds_query]
        replies = self.send(agency, p.Done())
        if (self.faults.disk_full or self.faults.fail_commits) and not self.done[agency]:
            assert [(r.code, r.first) for r in replies] == [(E.STORAGE_FAILED, 0)]
            return
        assert replies == [p.DoneAck()]
        self.done[agency] = True
        if self.drawn():
            for other in held:  # the draw answered every held query
                answer = self.sessions[other][1].replies()
                assert answer == [p.Winners(self.winners(other), final=True)]

    @precondition(lambda self: self.sessions)
    @rule(data=st.data())
    def winners_query(self, data) -> None:
        agency = data.draw(st.sampled_from(sorted(self.sessions)))
        session, connection = self.sessions[agency]
        if session.holds_query:
            return  # a held connection reads nothing more
        replies = self.send(agency, p.WinnersQuery())
        if not self.done[agency]:
            assert [r.code for r in replies] == [E.NOT_DONE]
        elif self.drawn():
            assert replies == [p.Winners(self.winners(agency), final=True)]
        else:
            assert replies == [] and session.holds_query and connection.held

    @rule()
    def disk_fills_or_empties(self) -> None:
        self.faults.disk_full = not self.faults.disk_full

    @rule()
    def commits_start_or_stop_failing(self) -> None:
        self.faults.fail_commits = not self.faults.fail_commits

    @invariant()
    def store_equals_model(self) -> None:
        if not hasattr(self, "store"):
            return
        rows = {a: [] for a in self.stored}
        for row in self.store.iter_bets():
            rows[row[0]].append(row[3])
        for agency, count in self.stored.items():
            assert rows[agency] == [bet(agency, s).document for s in range(1, count + 1)]
        states = self.store.agencies()
        for agency, count in self.stored.items():
            state = states.get(agency)
            assert (state.committed if state else 0) == count
            assert (state.done if state else False) == self.done[agency]

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()


TestLottery = LotteryMachine.TestCase


def test_a_drain_ends_the_sessions_a_slice_a_turn_and_each_gets_shutting_down(monkeypatch):
    monkeypatch.setattr("reactor.service.DRAIN_SESSIONS_PER_TURN", 4)
    loop = FakeLoop()
    lottery = Lottery(Store(":memory:"), LotteryConfig(agencies=AGENCIES), loop)
    connections = [FakeConnection() for _ in range(10)]
    for connection in connections:
        lottery.new_session(connection)
    lottery.shutdown()
    closed_after_each_turn = [sum(c.closed for c in connections)]
    while loop.ready:
        loop.run_ready()
        closed_after_each_turn.append(sum(c.closed for c in connections))
    assert closed_after_each_turn == [4, 8, 10]
    for connection in connections:
        assert [reply.code for reply in connection.replies()] == [E.SHUTTING_DOWN]
