"""The usage ledger's writer: rows grouped into one transaction per group, on one thread.

Two kinds of rows:

- **billed rows** (:meth:`Ledger.commit`): an answered request's row. The caller waits for
  its future before the answer leaves, so an answer is never sent for a row that is not
  committed: a ``kill -9`` at any moment loses no answered request's row. Rows that arrive
  while a transaction is in flight go into the next one (group commit), and the requests
  of one engine batch come together: each announces its row (:meth:`Ledger.expecting`)
  when its batch is done, and the writer waits for the announced rows (at most
  ``linger_s``) before it commits, so the cost is about one commit per engine batch, not
  one per request.
- **audit rows** (:meth:`Ledger.record`): failed requests (nothing billed). Written in the
  same groups, never waited for, kept in a bounded buffer while the database is down and
  dropped (counted) beyond it, so an unauthenticated flood cannot grow memory; gathered
  for up to ``audit_linger_s`` into one transaction.

A billed row's waiter may give up (the database hangs: a stopped server, a lost network
path). A row it gave up on before its transaction began is never written; one already in
flight is, when the transaction ends, marked unbilled (status 503, no cost) at once, since
its request was answered 503: no client pays for an answer it did not get.

A row whose values the database refuses (a data error) fails alone: the group is retried
row by row, a row whose request id is stored already counts as stored (a retry after a
commit whose answer was lost), and no error ends the writer thread. While the database is
unreachable every billed row's future fails at once with :class:`LedgerUnavailable` (the
request gets 503, nothing is billed for it) and a probe pings the database every
``probe_s`` until it answers again; :attr:`Ledger.healthy` says which state it is in.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence

import sqlalchemy as sa

from albert_jax.serving import db

logger = logging.getLogger(__name__)


class LedgerUnavailable(Exception):  # noqa: N818 - the name says what the caller sees
    """The database cannot store rows now (down, unreachable, timed out)."""


@dataclasses.dataclass
class _Pending:
    row: dict
    future: concurrent.futures.Future | None  # None: an audit row


def _is_outage(error: BaseException) -> bool:
    """True for errors of the database's availability (connection refused or lost, timeouts,
    a locked SQLite file), False for errors of the rows' values."""
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, (sa.exc.OperationalError, sa.exc.InterfaceError,
                              sa.exc.TimeoutError, sa.exc.DisconnectionError))


class Ledger:
    """Group-committing writer of usage rows (billed rows waited for, audit rows not)."""

    def __init__(self, engine: sa.Engine, *, batch: int = 512, max_audit: int = 10_000,
                 probe_s: float = 1.0, linger_s: float = 0.005,
                 audit_linger_s: float = 0.05,
                 on_write: Callable[[int, float], None] | None = None,
                 on_drop: Callable[[int], None] | None = None) -> None:
        self.engine = engine
        self.batch = batch
        self.max_audit = max_audit
        self.probe_s = probe_s
        self.linger_s = linger_s
        self.audit_linger_s = audit_linger_s
        self._expected = 0  # billed rows announced and not queued yet
        self._on_write = on_write  # (rows, seconds) of each committed group
        self._on_drop = on_drop  # audit rows dropped
        self._queue: collections.deque[_Pending] = collections.deque()
        self._audit = 0  # audit rows queued
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._abandoned: set[str] = set()  # request ids whose waiter gave up mid-write
        self.healthy = True
        self.last_error: str | None = None
        # The URL as given (password included) only so that its messages can scrub it.
        self._url = engine.url.render_as_string(hide_password=False)
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side
    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def expecting(self, n: int) -> None:
        """``n`` billed rows will come soon (their answers are being encoded); -n: they will
        not after all. The writer waits for them, briefly, so that they share a commit."""
        with self._cond:
            self._expected = max(0, self._expected + n)
            if n < 0:
                self._cond.notify_all()

    def commit(self, row: dict, expected: bool = False) -> concurrent.futures.Future:
        """Queues a billed row (``expected``: announced by :meth:`expecting`); its future is
        done (None) once the row is committed, or fails with :class:`LedgerUnavailable` (or
        the row's own data error)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if expected:
                self._expected = max(0, self._expected - 1)
            if self._stopping:
                future.set_exception(LedgerUnavailable("the ledger is closed"))
                return future
            if not self.healthy:
                future.set_exception(LedgerUnavailable(self.last_error or "unavailable"))
                return future
            self._queue.append(_Pending(row, future))
            self._cond.notify_all()
        return future

    def abandon(self, future: concurrent.futures.Future, request_id: str) -> None:
        """The waiter of a billed row gives up (it answers 503): the row is not written, or,
        when its transaction is in flight, marked unbilled after it."""
        if future.cancel():
            return  # Not taken yet: the writer drops it.
        with self._cond:
            if not future.done() or future.exception() is None:
                self._abandoned.add(request_id)
                self._cond.notify_all()

    def record(self, row: dict) -> None:
        """Queues an audit row (not waited for; dropped beyond ``max_audit`` queued)."""
        with self._cond:
            if self._audit >= self.max_audit:
                dropped = True
            else:
                dropped = False
                self._audit += 1
                self._queue.append(_Pending(row, None))
                self._cond.notify_all()
        if dropped and self._on_drop is not None:
            self._on_drop(1)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Waits until every queued row is written (or given up on); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                if not self.healthy and not self._has_billed():
                    return False  # Audit rows wait for the database: not for ever here.
                self._cond.wait(left if left is None else min(left, 0.1))
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Writes what is queued (while the database answers), then ends the thread."""
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _reason(self, error: BaseException) -> str:
        """One line for the log: the driver's message, the database URL password-free."""
        return db.describe_error(self._url, error)[:300]

    # ------------------------------------------------------------------ writer thread
    def _has_billed(self) -> bool:
        return any(p.future is not None for p in self._queue)

    def _run(self) -> None:
        while True:
            try:
                if not self._step():
                    return
            except BaseException:  # A bug here must not end billing: log, go on.
                logger.exception("usage ledger writer: unexpected error")
                time.sleep(0.1)

    def _step(self) -> bool:
        """One group (or one probe while unhealthy); False when stopping with nothing left."""
        with self._cond:
            while (not self._queue and not self._stopping and self.healthy
                   and not self._abandoned):
                self._cond.wait()
            if self._stopping and (not self._queue or not self.healthy):
                if self.healthy and self._abandoned:
                    self._cond.release()  # (the lock is not held while the database works)
                    try:
                        self._unbill_abandoned()
                    finally:
                        self._cond.acquire()
                self._fail_billed("the server is stopping")
                if self._queue:
                    logger.error("usage ledger: %d failed requests' rows not written (the "
                                 "database is unavailable)", len(self._queue))
                return False
            if not self.healthy:
                self._cond.wait(self.probe_s)
                unhealthy = not self.healthy
            else:
                unhealthy = False
            if not unhealthy:
                # Rows of the same engine batch are on their way: wait for them, briefly.
                deadline = time.monotonic() + self.linger_s
                while (self._expected > 0 and len(self._queue) < self.batch
                       and not self._stopping):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                # Audit rows alone are waited for by nobody: gather them for a while.
                deadline = time.monotonic() + self.audit_linger_s
                while (not self._has_billed() and len(self._queue) < self.batch
                       and not self._stopping):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                group = []
                while self._queue and len(group) < self.batch:
                    p = self._queue.popleft()
                    # A billed row whose waiter gave up already is dropped (cancelled).
                    if p.future is None or p.future.set_running_or_notify_cancel():
                        group.append(p)
                self._busy = True
        if unhealthy:
            self._probe()
            return True
        try:
            if group:
                self._write(group)
            self._unbill_abandoned()
        except BaseException as e:
            logger.exception("usage ledger writer: unexpected error")
            for p in group:  # No billed request may wait for ever on its row.
                if p.future is not None and not p.future.done():
                    p.future.set_exception(LedgerUnavailable(self._reason(e)))
        finally:
            with self._cond:
                self._audit -= sum(p.future is None for p in group)
                self._busy = False
                self._cond.notify_all()
        return True

    def _unbill_abandoned(self) -> None:
        """Marks the rows whose waiters gave up during their transaction unbilled."""
        with self._cond:
            ids, self._abandoned = self._abandoned, set()
        if not ids:
            return
        try:
            db.unbill(self.engine, sorted(ids))
        except Exception as e:
            if _is_outage(e):  # Kept until the database answers: they must not stay billed.
                logger.error("usage ledger: %d abandoned rows not yet marked unbilled (%s)",
                             len(ids), self._reason(e))
                with self._cond:
                    self._abandoned |= ids
                self._outage([], e)
            else:  # Not retried (it would fail again): said, with the rows it concerns.
                logger.error("usage ledger: rows %s could not be marked unbilled: %s",
                             ", ".join(sorted(ids)), self._reason(e))
        else:
            logger.warning("usage ledger: %d rows written after their requests were answered "
                           "503 (the database was slow) marked unbilled", len(ids))

    def _probe(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as e:
            self.last_error = self._reason(e)
            return
        with self._cond:
            self.healthy = True
            self.last_error = None
            self._cond.notify_all()
        logger.warning("usage ledger: the database answers again")

    def set_unhealthy(self, error: BaseException) -> None:
        """Marks the database down (a key lookup saw it fail): billed rows fail fast until
        the probe sees it answer."""
        with self._cond:
            was = self.healthy
            self.healthy = False
            self.last_error = self._reason(error)
            self._fail_billed(self.last_error)
            self._cond.notify_all()
        if was:
            logger.error("usage ledger: the database is unavailable (%s)", self.last_error)

    def _fail_billed(self, reason: str) -> None:
        """Fails every queued billed row (lock held); audit rows stay for later."""
        kept: collections.deque[_Pending] = collections.deque()
        for p in self._queue:
            if p.future is None:
                kept.append(p)
            elif not p.future.done():
                p.future.set_exception(LedgerUnavailable(reason))
        self._queue = kept

    def _write(self, group: Sequence[_Pending]) -> None:
        start = time.perf_counter()
        try:
            db.insert_usage(self.engine, [p.row for p in group])
        except Exception as e:
            if _is_outage(e):
                self._outage(group, e)
                return
            self._one_by_one(group)  # A data error: find the bad rows, store the others.
        else:
            for p in group:
                if p.future is not None:
                    p.future.set_result(None)
        if self._on_write is not None:
            self._on_write(len(group), time.perf_counter() - start)

    def _one_by_one(self, group: Sequence[_Pending]) -> None:
        for i, p in enumerate(group):
            try:
                db.insert_usage(self.engine, [p.row])
            except sa.exc.IntegrityError as e:
                if not self._stored(p.row):
                    self._refused(p, e)
                    continue
                # Stored already (a request id is unique): a retried group; counts as stored.
                logger.warning("usage row %s was stored already", p.row.get("request_id"))
            except Exception as e:
                if _is_outage(e):
                    self._outage(group[i:], e)
                    return
                self._refused(p, e)
                continue
            if p.future is not None:
                p.future.set_result(None)

    def _stored(self, row: dict) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(db.usage.c.id).where(
                db.usage.c.request_id == row.get("request_id"))).first() is not None

    def _refused(self, p: _Pending, error: BaseException) -> None:
        logger.error("usage row %s refused by the database: %s", p.row.get("request_id"),
                     self._reason(error))
        if p.future is not None:
            p.future.set_exception(error)

    def _outage(self, group: Sequence[_Pending], error: BaseException) -> None:
        """The database is down: billed rows fail (their requests get 503), audit rows go
        back to the front of the queue for when it answers again."""
        reason = self._reason(error)
        with self._cond:
            for p in reversed(group):
                if p.future is None:
                    self._queue.appendleft(p)
                    self._audit += 1  # Counted out again after the group.
                elif not p.future.done():
                    p.future.set_exception(LedgerUnavailable(reason))
            was = self.healthy
            self.healthy = False
            self.last_error = reason
            self._fail_billed(reason)
        if was:
            logger.error("usage ledger: the database is unavailable (%s)", reason)
