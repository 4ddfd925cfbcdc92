"""The lottery: agencies' accounts, per-bet sequencing, DONE, the turn's commit, the draw.

Theory of operation. Sessions (reactor/session.py) bring requests through a small
public seam: `admit` a HELLO, `take_batch`, `take_done`, `winners_for`,
`wait_for_commit`, `session_ending` / `session_ended`. Work that must be durable
before it is answered (a batch, a DONE) is staged in the store's open transaction
and its `Reply` waits for the commit.

At the end of every loop turn (reactor/turn.py) `commit_turn()` commits once (group
commit): on success it logs each stored batch and moves every agency's `committed`
forward; on failure nothing of the turn is stored and the agencies fall back to
what is durable. `release_turn()` then settles every session that waited (its
replies go out, or become STORAGE_FAILED) and lets the draw take its next step.
A fault the loop isolated anywhere in a turn rolls the whole turn back
(`fault_in_turn`): what it staged may be half done.

Per agency (`AgencyAccount`): `committed` (durable), `staged` (what the open transaction adds: the turns since the last commit),
DONE, and its one live session. Global: the expected agencies and the draw. All of
it is rebuilt from the store at start, after checking that the store holds this
lottery (`LotteryMismatch` otherwise).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass, field
from typing import Mapping

from protocol import (
    BLOCK_BETS,
    Ack,
    AgencyDigest,
    Bets,
    DoneAck,
    ErrorCode,
    Hello,
    Welcome,
    commitment,
    derive_winning_number,
    encode_bet,
    first_invalid_bet,
    utc_today,
)
from protocol.digest import DigestMark
from runtime.logfmt import log_event

from .draw import Draw
from .session import Refusal, Reply, Session
from .store import DatabaseLost, DatabaseUnusable, Holdings, LotteryRecord, StorageError, Store

log = logging.getLogger(__name__)

DRAIN_SESSIONS_PER_TURN = 200  # sessions ended per turn of a drain
MISSING_EVERY = 30.0  # seconds between the lines naming the agencies the draw still waits for


@dataclass
class AgencyAccount:
    """One agency at the central: what is durable, what is staged since the last commit, its DONE,
    its digest (over the staged bets; `turn_mark` is where the durable ones end while
    uncommitted bets were added), and its one live session."""

    number: int
    committed: int = 0
    staged: int = 0
    done: bool = False
    done_staged: bool = False
    session: Session | None = None
    digest: AgencyDigest = field(default_factory=AgencyDigest)
    turn_mark: DigestMark | None = None
    tail_rowid: int | None = None  # where uncommitted bets started the digest's unfinished block

    def durable_digest(self) -> bytes:
        """digest(committed): the receipt for what is durable now."""
        if self.turn_mark is None:
            return self.digest.digest()
        return self.digest.digest_at(self.turn_mark)


RANDOM, VERIFIABLE = "random", "verifiable"


@dataclass
class LotteryConfig:
    """The lottery's settings: how many agencies, how the number is drawn (a number
    0..9999, "random": drawn with `secrets` at the draw, or "verifiable": derived
    from a seed committed to before any bet, PROTOCOL.md version 2), their tokens."""

    agencies: int = 5
    winning_number: int | str = 7574
    tokens: Mapping[int, str] = field(default_factory=dict)

    @property
    def winning_number_setting(self) -> str:
        """The winning-number setting as the database records it."""
        return str(self.winning_number)


class LotteryMismatch(Exception):
    """The database holds a lottery that the configuration contradicts; the message
    is one line saying what it holds and how to start fresh."""


class Lottery:
    """Owns the agencies' accounts, the live sessions, the store's turn-long
    transaction and the draw."""

    def __init__(self, store: Store, config: LotteryConfig, loop, today=utc_today) -> None:
        self.store = store
        self.config = config
        self.today = today
        self._loop = loop  # scheduling and fault isolation only: the service never touches I/O
        self.agencies = {n: AgencyAccount(n) for n in range(1, config.agencies + 1)}
        self.sessions: set[Session] = set()
        self._waiting: set[Session] = set()
        self._stored_uncommitted: list[tuple[AgencyAccount, int]] = []
        self._turn_lost: str | None = None  # why the open transaction cannot be committed
        self._announced = False  # the draw was announced in this turn's commit step
        self.bets_awaiting_commit = 0  # staged since the last commit
        self.draining = False
        # Figures the admin side reads (counted per batch or per turn, never per bet).
        self.batches_acked = 0
        self.batches_refused = 0
        self._acks_waiting = 0  # ACKs that wait for the next commit
        self.errors_sent: dict[ErrorCode, int] = dict.fromkeys(ErrorCode, 0)
        # The store's last turn of work failed (a piece staged, or the commit): /readyz says so.
        self.last_commit_failed = False
        self._store_failed = False  # a piece of the open transaction's work failed (a full disk fails there)
        self._missing_timer = None
        self._touched: list[AgencyAccount] = []  # accounts whose digest moved since the last commit
        self.record = self._adopt_database()
        seed = self.record.seed
        self.draw = Draw(store, loop, self._winning_number,
                         everyone_done=lambda: all(a.done for a in self.agencies.values()),
                         transaction_lost=self._lose_turn, seed=seed.hex() if seed else None)
        self._recover()

    # --- sessions: the public seam -----------------------------------------------------
    def new_session(self, connection) -> Session:
        session = Session(self, connection)
        self.sessions.add(session)
        return session

    def admit(self, session: Session, hello: Hello) -> AgencyAccount:
        """Binds the session to the agency its HELLO names, ending an older session of it."""
        account = self.agencies.get(hello.agency)
        if account is None:
            raise Refusal(ErrorCode.UNAUTHORIZED, f"agency {hello.agency} is not one of 1..{len(self.agencies)}")
        tokens = self.config.tokens
        expected = tokens.get(hello.agency)
        if tokens and (expected is None or not hmac.compare_digest(hello.token.encode(), expected.encode())):
            raise Refusal(ErrorCode.UNAUTHORIZED, f"wrong or missing token for agency {hello.agency}")
        if account.session is not None:
            account.session.end(ErrorCode.SESSION_REPLACED, "a newer session of this agency took over")
        account.session = session
        return account

    def welcome(self, account: AgencyAccount, version: int) -> Reply:
        """WELCOME in the session's version: version 2 adds digest(committed)."""
        digest = account.durable_digest() if version >= 2 else None
        return Reply.of(Welcome(committed=account.committed, agency_done=account.done,
                                draw_done=self.draw.finished, digest=digest))

    def take_batch(self, account: AgencyAccount, batch: Bets) -> Reply:
        """Validates, sequences and stages a batch; its ACK, or a Refusal (PROTOCOL.md's
        order of checks: every bet valid, then the agency's state)."""
        problem = first_invalid_bet(batch.bets, self.today())
        if problem is not None:
            raise self._refused(account, batch, ErrorCode.INVALID_BET, str(problem))
        if batch.first > account.staged + 1:
            raise self._refused(account, batch, ErrorCode.SEQUENCE_GAP,
                                f"batch starts at bet {batch.first}; next expected is {account.staged + 1}")
        ack = Ack(batch.first, batch.count)
        if batch.last <= account.staged:  # stored before: nothing to store again
            log_event(log, logging.INFO, "apuesta_recibida", "success", cantidad=0, agency=account.number)
            # durable only once the next commit is done, when it was staged since the last
            waits = batch.last > account.committed
            if waits:
                self._acks_waiting += 1
            else:
                self.batches_acked += 1
            return Reply.of(ack, waits_for_commit=waits, first=batch.first)
        if account.done_staged:
            raise self._refused(account, batch, ErrorCode.AGENCY_CLOSED,
                                "this agency sent DONE; it takes no new bets")
        skip = account.staged + 1 - batch.first
        new_bets = batch.bets[skip:]
        tail_at, mark = self._extend_digest(account, batch, skip, new_bets)
        try:
            first_rowid = self.store.stage_bets(account.number, new_bets)
        except StorageError as error:
            account.digest.rewind(mark)
            self._storage_failed(error)
            raise self._refused(account, batch, ErrorCode.STORAGE_FAILED,
                                "the store could not take the batch; retry later") from None
        if tail_at is not None:
            account.tail_rowid = first_rowid + tail_at
        account.staged = batch.last
        self._stored_uncommitted.append((account, len(new_bets)))
        self.bets_awaiting_commit += len(new_bets)
        self._acks_waiting += 1
        return Reply.of(ack, waits_for_commit=True, first=batch.first)

    def _extend_digest(self, account: AgencyAccount, batch: Bets, skip: int, new_bets) -> tuple:
        """Hashes the batch's new bets into the agency's digest (once, from the wire
        bytes when it has them): where the unfinished block starts among them (None:
        before them), and the mark to rewind to."""
        digest, before = account.digest, account.staged
        mark = digest.mark()
        if account.turn_mark is None:
            account.turn_mark = mark
            self._touched.append(account)
        if batch.encoded is not None:
            digest.extend(batch.encoded, batch.count, skip)
        else:  # a batch built in memory (the bench's servers, tests)
            digest.extend(b"".join(map(encode_bet, new_bets)), len(new_bets))
        after = batch.last
        block_start = after - after % BLOCK_BETS  # bets before the unfinished block
        tail_at = block_start - before if after % BLOCK_BETS and block_start >= before else None
        return tail_at, mark

    def take_done(self, account: AgencyAccount, version: int) -> Reply:
        """Records DONE (idempotent); DONE_ACK waits for the commit unless already
        durable. In version 2 it is the receipt: the agency's bets and their digest."""
        if not account.done_staged:
            try:
                self.store.stage_done(account.number)
            except StorageError as error:
                self._storage_failed(error)
                raise Refusal(ErrorCode.STORAGE_FAILED, "the store could not take the request; retry later") from None
            account.done_staged = True
        # After DONE no batch adds bets, so what is staged now is what the commit makes durable.
        receipt = DoneAck(account.staged, account.digest.digest()) if version >= 2 else DoneAck()
        return Reply.of(receipt, waits_for_commit=not account.done)

    def winners_for(self, account: AgencyAccount) -> list[str] | None:
        """The agency's winning documents, None while the draw has not happened."""
        if not account.done_staged:
            raise Refusal(ErrorCode.NOT_DONE, "send DONE before asking for winners")
        if self.draw.winners is None:
            return None
        return self.draw.winners.get(account.number, [])

    def wait_for_commit(self, session: Session) -> None:
        self._waiting.add(session)

    def error_sent(self, code: ErrorCode) -> None:
        self.errors_sent[code] += 1

    def session_ending(self, session: Session) -> None:
        """The session's agency may take a new session (a fatal error is on its way)."""
        if session.agency is not None and session.agency.session is session:
            session.agency.session = None

    def session_ended(self, session: Session) -> None:
        self.session_ending(session)
        self.sessions.discard(session)
        self._waiting.discard(session)

    def _refused(self, account: AgencyAccount, batch: Bets, code: ErrorCode, message: str) -> Refusal:
        """A refused batch: logged as the course's failed `apuesta_recibida`."""
        log_event(log, logging.INFO, "apuesta_recibida", "fail", cantidad=batch.count, agency=account.number,
                  code=code.name)
        self.batches_refused += 1
        return Refusal(code, message, batch.first)

    # --- the turn ------------------------------------------------------------------
    def _storage_failed(self, error: StorageError) -> None:
        log_event(log, logging.ERROR, "store", "fail", error=str(error).replace("|", "/"))
        self._store_failed = True
        if error.transaction_lost:
            self._lose_turn("the store lost the turn's transaction")

    def _lose_turn(self, why: str) -> None:
        self._turn_lost = why

    @property
    def turn_lost(self) -> bool:
        """What was staged cannot be committed: the end of the turn must roll it back now."""
        return self._turn_lost is not None

    def fault_in_turn(self, error: BaseException) -> None:
        """The loop isolated a fault: whatever the turn staged may be half done, so the
        turn is rolled back (its waiting replies become STORAGE_FAILED)."""
        if self.store.in_transaction or self._waiting:
            self._lose_turn(f"a fault in the turn ({type(error).__name__})")

    def commit_turn(self) -> bool | None:
        """Commits what the turn staged and moves every agency forward, or rolls it all
        back (None when the turn staged nothing and nothing waits); then, once the
        draw's scan is durable, lets it read its winners and log itself.

        Raises DatabaseLost (from the store) when the database's files were replaced:
        then nothing of the turn may be acknowledged, and the caller stops.
        """
        committed = None
        if self.store.in_transaction or self._waiting or self._turn_lost:
            committed = self._commit()
        if committed is not None or self._store_failed:  # a turn that wrote nothing says nothing of the store
            self.last_commit_failed = committed is False or self._store_failed
        self._store_failed = False
        self._announced = self.draw.announce_if_due()
        return committed

    def _commit(self) -> bool:
        if self._turn_lost is None:
            self._stage_accounts()
        committed = self._turn_lost is None
        if committed:
            try:
                self.store.commit()
            except StorageError as error:
                self._storage_failed(error)
                committed = False
            except DatabaseLost:
                raise
            except Exception as error:  # a fault inside the store's transaction: the turn is rolled back
                log.error("action: store | result: fail | error: %r", error, exc_info=error)
                self.store.rollback()
                committed = False
        else:
            log_event(log, logging.WARNING, "turn", "in_progress", rolled_back=self._turn_lost)
            self.store.rollback()  # what was staged after the loss cannot stand alone
        self._turn_lost = None
        if committed:
            for account, count in self._stored_uncommitted:
                log_event(log, logging.INFO, "apuesta_recibida", "success", cantidad=count, agency=account.number)
            for account in self.agencies.values():
                account.committed = account.staged
                if account.done_staged and not account.done:
                    account.done = True
                    log_event(log, logging.INFO, "agency_done", "success", agency=account.number,
                              bets=account.committed)
                    if self._missing_timer is None:  # the first DONE; then the timer's rhythm
                        self._tell_missing()
            for account in self._touched:
                account.turn_mark = account.tail_rowid = None
            self.batches_acked += self._acks_waiting
            self.draw.turn_committed()
        else:
            for account in self.agencies.values():
                account.staged = account.committed
                account.done_staged = account.done
            for account in self._touched:
                account.digest.rewind(account.turn_mark)
                account.turn_mark = account.tail_rowid = None
            self.batches_refused += self._acks_waiting
            self.draw.turn_failed()
        self._acks_waiting = 0
        self._stored_uncommitted.clear()
        self._touched.clear()
        self.bets_awaiting_commit = 0
        return committed

    def _tell_missing(self) -> None:
        """Names the agencies the draw still waits for: at the first DONE, then every
        MISSING_EVERY seconds while it waits."""
        missing = [a.number for a in self.agencies.values() if not a.done]
        self._missing_timer = None
        if not missing or self.draw.state is not None or self.draining:
            return
        log_event(log, logging.INFO, "draw_waiting", "in_progress", done=len(self.agencies) - len(missing),
                  missing=",".join(map(str, missing)))
        self._missing_timer = self._loop.call_later(MISSING_EVERY, self._tell_missing)

    def _stage_accounts(self) -> None:
        """Each agency that stored bets since the last commit: its committed and digest state, in
        one statement a turn (not one a batch), beside its bets."""
        for account in self._touched:
            new_blocks = account.digest.completed_blocks(account.committed // BLOCK_BETS)
            try:
                self.store.stage_agency(account.number, account.staged, new_blocks, account.tail_rowid,
                                        account.digest.digest())
            except StorageError as error:
                self._storage_failed(error)
                self._lose_turn("the store could not record an agency's progress")
                return

    def release_turn(self, committed: bool | None) -> None:
        """Settles every session that waited for the commit, answers the held queries
        once the draw is announced, then lets the draw take its next step."""
        if committed is not None:
            waiting, self._waiting = self._waiting, set()
            for session in waiting:  # one session's fault must not keep the others' replies
                self._loop.isolate(session.connection, session.commit_settled, committed)
            if not committed:
                lost = Refusal(ErrorCode.NOT_DONE, "DONE was not stored; send it again")
                for session in list(self.sessions):  # a held query whose DONE was lost
                    if session.holds_query and not session.agency.done_staged:
                        self._loop.isolate(session.connection, session.answer_held_query, None, lost)
        if self._announced:
            self._announced = False
            for session in list(self.sessions):
                if session.holds_query:
                    self._loop.isolate(session.connection, session.answer_held_query,
                                       self.draw.winners.get(session.agency.number, []))
        self.draw.advance()

    def end_of_turn(self) -> None:
        """`commit_turn` then `release_turn`: a turn's end with no log output to write."""
        self.release_turn(self.commit_turn())

    # --- start and stop --------------------------------------------------------------
    def _adopt_database(self) -> LotteryRecord:
        """Makes sure the database holds this lottery (or refuses with LotteryMismatch),
        and records it; a verifiable draw's seed is drawn here, before any bet."""
        config, store = self.config, self.store
        setting = config.winning_number_setting
        record, holdings = store.lottery(), store.holdings()
        if record is not None and not holdings.empty:
            fresh = "or a new --db to start a new lottery"
            if record.agencies != config.agencies:
                raise LotteryMismatch(
                    f"database {store.path} holds a lottery of {record.agencies} agencies ({_describe(holdings)}); "
                    f"started with {config.agencies}: start with --agencies {record.agencies}, {fresh}"
                )
            changed = record.winning_number != setting
            if changed and (holdings.draw is not None or VERIFIABLE in (record.winning_number, setting)):
                why = ("drawn" if holdings.draw is not None else
                       "committed to a verifiable draw before its bets" if record.winning_number == VERIFIABLE else
                       "took bets before any commitment, so it cannot be verifiable")
                raise LotteryMismatch(
                    f"database {store.path} holds a lottery {why} with winning number {record.winning_number!r} "
                    f"({_describe(holdings)}); started with {setting!r}: start with --winning-number "
                    f"{record.winning_number}, {fresh}"
                )
        if record is not None and (record.agencies, record.winning_number) == (config.agencies, setting):
            return record
        seed = None
        if setting == VERIFIABLE:
            seed = secrets.token_bytes(32)
        return store.record_lottery(config.agencies, setting, seed, commitment(seed) if seed else None)

    def _winning_number(self) -> int:
        """The number, when the draw is fixed (every DONE is durable, so every digest final)."""
        setting = self.config.winning_number
        if setting == RANDOM:
            return secrets.randbelow(10_000)
        if setting == VERIFIABLE:
            return derive_winning_number(self.record.seed, [self.agencies[n].digest.digest()
                                                            for n in sorted(self.agencies)])
        return int(setting)

    def _recover(self) -> None:
        """Rebuilds every account from the store; each digest from its finished blocks'
        hashes and at most one unfinished block of bets read back."""
        for number, state in self.store.agencies().items():
            account = self.agencies.get(number)
            if account is not None:
                account.committed = account.staged = state.committed
                account.done = account.done_staged = state.done
                tail = state.committed % BLOCK_BETS
                bets = self.store.tail_bets(number, state.tail_rowid, tail) if tail else []
                try:
                    account.digest = AgencyDigest.resume(state.committed, state.blocks, bets)
                except ValueError as error:
                    raise DatabaseUnusable(f"database {self.store.path}: agency {number}'s digest: {error}") from None
                if state.digest is not None and account.digest.digest() != state.digest:
                    raise DatabaseUnusable(
                        f"database {self.store.path}: agency {number}'s bets no longer give the receipt it was "
                        "handed (a stored bet was changed): run python -m reactor audit"
                    )
        if self.record.commitment:
            log_event(log, logging.INFO, "draw_commitment", "success", commitment=self.record.commitment)
        log_event(
            log, logging.INFO, "recover", "success",
            agencies=len(self.agencies),
            bets=sum(account.committed for account in self.agencies.values()),
            committed=",".join(f"{a.number}={a.committed}" for a in self.agencies.values()),
            done=",".join(str(a.number) for a in self.agencies.values() if a.done) or "-",
            draw=self.draw.phase,
        )
        self.draw.advance()

    def shutdown(self) -> None:
        """Draining: every session gets SHUTTING_DOWN after the answers it is owed.

        Sessions are ended DRAIN_SESSIONS_PER_TURN a turn, so a drain with thousands
        of sessions is many short turns, not one long one. A message that arrives
        meanwhile gets SHUTTING_DOWN too.
        """
        self.draining = True
        self.draw.stop()
        if self._missing_timer is not None:
            self._missing_timer.cancel()
        self._end_sessions(list(self.sessions))

    def _end_sessions(self, sessions: list[Session]) -> None:
        for session in sessions[:DRAIN_SESSIONS_PER_TURN]:
            self._loop.isolate(session.connection, session.end, ErrorCode.SHUTTING_DOWN,
                               "the server is shutting down; retry later")
        if len(sessions) > DRAIN_SESSIONS_PER_TURN:
            self._loop.call_soon(self._end_sessions, sessions[DRAIN_SESSIONS_PER_TURN:])


def _describe(holdings: Holdings) -> str:
    draw = "no draw" if holdings.draw is None else ("draw done" if holdings.draw.finished else "draw started")
    return f"{holdings.bets} bets, {holdings.done} agencies done, {draw}"
