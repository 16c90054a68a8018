"""The usage ledger's writer: one row per inference request, inserted in batches off the
event loop by a background thread; :meth:`Ledger.flush` waits until every row is stored."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time

import sqlalchemy as sa

from albert_jax.serving import db

logger = logging.getLogger(__name__)


class Ledger:
    """Queues usage rows and writes them in batches (every ``interval_s`` or ``batch`` rows)."""

    def __init__(self, engine: sa.Engine, interval_s: float = 0.2, batch: int = 512) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.batch = batch
        self._queue: queue.Queue[dict | None] = queue.Queue()
        self._pending = 0  # rows queued and not yet committed
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def record(self, row: dict) -> None:
        with self._cond:
            self._pending += 1
        self._queue.put(row)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Blocks until every queued row is committed; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        stop = False
        while not stop:
            rows: list[dict] = []
            item = self._queue.get()
            if item is None:
                break
            rows.append(item)
            deadline = time.monotonic() + self.interval_s
            while len(rows) < self.batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                rows.append(item)
            self._write(rows)

    def _write(self, rows: list[dict]) -> None:
        for attempt in range(5):
            try:
                db.insert_usage(self.engine, rows)
                break
            except sa.exc.IntegrityError:
                # A row already stored (a retry after a commit whose answer was lost):
                # store the others one by one; a request id is never counted twice.
                for row in rows:
                    with contextlib.suppress(sa.exc.IntegrityError):
                        db.insert_usage(self.engine, [row])
                break
            except sa.exc.SQLAlchemyError:
                logger.exception("usage ledger write failed (attempt %d of 5)", attempt + 1)
                time.sleep(0.5 * (attempt + 1))
        with self._cond:
            self._pending -= len(rows)
            self._cond.notify_all()
