"""Continuous dynamic batching of single rows from many requests onto one engine.

Every :class:`~albert_jax.engine.Engine` gets one dedicated thread (JAX runs only there;
the event loop only waits on futures). The thread takes whatever is queued into the next
batch while it fits: at most ``max_batch_size`` rows and at most ``max_batch_tokens``
*padded* tokens (rows bucket x length bucket, the shape the device really runs). The oldest
row always rides in the next batch and sets its length bucket; younger rows of that bucket
or shorter join it in arrival order, longer ones wait for the next batch (which goes at
once), so short rows are not padded to long ones and no row starves. A batch is cut to the
largest batch bucket it fills (the rows cut lead the next batch): padding rows cost compute
too. When the queue holds less than a full batch the thread waits for more rows, but never
longer than ``max_wait_s`` after the oldest one arrived; a full batch goes at once, and rows
that arrive while the device is busy ride in the next batch.

With ``pack_length`` (``albert-jax serve --pack-length``, default 64) rows of at most that
many tokens are not padded one per row: they are packed several to a row of
``pack_length`` tokens (:meth:`~albert_jax.engine.Engine.run_packed`; each attends only to
itself), and any of them may ride together, so a batch costs its tokens rather than rows x
its longest row. Row counts of packed batches come in fine steps
(:meth:`~albert_jax.engine.Engine.pack_row_buckets`). Longer rows are batched as above.

Every batch runs the engine step ``"topk_targets"``: the ``top_k`` best (score, id) over the
vocabulary and the probabilities at the row's own targets (up to ``num_targets``), chosen
on the device, so 2k + T numbers per row come back to the host instead of V, and rows with
and without targets share batches and one compiled step per shape.

A batch's device time is shared among its rows in proportion to their tokens: that share
is what a request is billed.

Fairness: every row has an owner (the API key, or the anonymous client's address). The
queue is kept in start-time fair order (start-time fair queueing, by tokens): a key that
queued 300 rows is served in turn with one that queued 3, not before it, and while other
keys wait no key holds more than its share of the queue (``max_queue`` divided among the
keys waiting, plus one share kept free for a newcomer).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence

import numpy as np

from albert_jax.batching import pack_sequences
from albert_jax.engine import PACKED_KINDS, Engine, Row, bucket_for
from albert_jax.serving.metrics import Metrics

logger = logging.getLogger(__name__)


class QueueFull(Exception):  # noqa: N818 - the name says what the caller sees
    """More rows are waiting than ``max_queue`` allows."""


@dataclasses.dataclass
class RowResult:
    """One row's outputs: the step's output (``"topk_targets"``: scores [K] and ids [K] best
    first, and the probabilities [T] at ``row.targets`` then at the padding id 0), its
    billed share of the batch's device time, and how long it queued."""

    output: tuple[np.ndarray, np.ndarray, np.ndarray]
    runtime_s: float
    queue_s: float
    batch_rows: int


@dataclasses.dataclass
class _Item:
    row: Row
    future: concurrent.futures.Future
    enqueued: float
    owner: str | None = None
    start_tag: float = 0.0  # virtual start time: the fair order of the queue
    taken: bool = False  # its future is running (it was in a gathered batch)


class Batcher:
    """Queues rows for one engine step and runs them in dynamic batches on its own thread.

    ``top_k``: the K best every row gets (the most a request may ask for); ``num_targets``:
    the most targets a row may carry (T). Both are static: one compiled step per shape.
    """

    def __init__(self, engine: Engine, *, name: str, top_k: int = 100,
                 num_targets: int = 100, max_batch_size: int = 32,
                 max_batch_tokens: int = 8192, max_wait_s: float = 0.002,
                 max_queue: int = 512, pack_length: int | None = None,
                 metrics: Metrics | None = None, compile_threads: int = 2) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        if isinstance(num_targets, bool) or not isinstance(num_targets, int) or num_targets < 0:
            raise ValueError(f"num_targets must be a non-negative integer, got {num_targets!r}")
        self.engine = engine
        self.compile_threads = compile_threads
        self.name = name
        self.kind = "topk_targets"
        self.top_k = top_k
        self.num_targets = num_targets
        self.max_batch_size = min(max_batch_size, engine.batch_size)
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.metrics = metrics
        smallest = engine.batch_buckets[0]
        fitting = [n for n in engine.length_buckets if smallest * n <= max_batch_tokens]
        if not fitting:
            raise ValueError(f"--max-batch-tokens {max_batch_tokens} cannot hold one sequence "
                             f"of the shortest length bucket ({engine.length_buckets[0]})")
        # The longest row any batch can hold: longer ones are refused at admission.
        self.max_length = min(engine.max_length, fitting[-1])
        # Packing: rows up to pack_length tokens share rows, at most pack_buckets[-1] of them.
        self.pack_length = None
        self.pack_buckets: tuple[int, ...] = ()
        if pack_length and self.kind in PACKED_KINDS:
            self.pack_length = pack_length  # Longer than max_length is fine: positions restart.
            cap = max(min(self.max_batch_size * self.pack_length, max_batch_tokens),
                      self.pack_length)
            # Two row counts per octave: a third fewer shapes to compile at start-up than
            # the engine's default ladder, for at most a third of a batch in padding rows.
            self.pack_buckets = engine.pack_row_buckets(self.pack_length, cap, per_octave=2)
            # Packed rows are not bound by the padded-token budget's longest row (the
            # model's own limit still is).
            self.max_length = min(engine.max_length, max(self.max_length, self.pack_length))
        long = self.pack_length or 0  # Shorter rows are packed, never padded.
        self.shapes = [(b, n) for n in engine.length_buckets
                       if n <= self.max_length and (n > long or not self.pack_length)
                       for b in engine.batch_buckets if b == smallest or b * n <= max_batch_tokens]
        if self.pack_length:
            self.shapes += [(r, -self.pack_length) for r in self.pack_buckets]
        self.compiled = 0
        self.ready = threading.Event()
        self.failure: BaseException | None = None  # why compiling failed (then it ended)
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._waiting = 0  # rows queued or in the batch being gathered (what max_queue bounds)
        self._owned: collections.Counter[str | None] = collections.Counter()  # per owner
        self._finish: dict[str | None, float] = {}  # owner -> virtual finish of its last row
        self._vtime = 0.0  # virtual time: start tag of the last row dispatched
        self._stopping = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)

    # ------------------------------------------------------------------ caller side
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Runs every queued row, then ends the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """False once the engine thread has ended (stopped, or failed)."""
        return self._thread.is_alive()

    @property
    def queued(self) -> int:
        """Rows waiting for the device (queued or in the batch being gathered)."""
        return self._waiting

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._queue and not self._busy

    def _share(self, owner: str | None) -> int:
        """Rows ``owner`` may have waiting now (lock held): ``max_queue`` divided among the
        owners with rows waiting (``owner`` included) plus one share kept for a newcomer."""
        active = len(self._owned) + (owner not in self._owned)
        return max(1, -(-self.max_queue // (active + 1)))

    @property
    def largest_request(self) -> int:
        """The most rows one request can ever have queued (an owner alone)."""
        return max(1, -(-self.max_queue // 2))

    def submit(self, rows: Sequence[Row], owner: str | None = None
               ) -> list[concurrent.futures.Future]:
        """Queues ``rows`` of ``owner`` (all or none); a future of a :class:`RowResult` per row.

        QueueFull when the queue, or ``owner``'s share of it, cannot take them all now;
        ValueError for a row longer than any batch holds or with more than ``num_targets``
        targets (callers check :attr:`max_length` and their target cap first, with better
        messages): one such row in a batch would fail all of it.
        """
        for row in rows:
            if not 0 < len(row.ids) <= self.max_length:
                raise ValueError(f"{len(row.ids)} tokens: outside 1..{self.max_length}")
            if len(row.targets) > self.num_targets:
                raise ValueError(f"{len(row.targets)} targets: more than {self.num_targets}")
        if self.failure is not None or (self._thread.ident is not None and not self.alive):
            raise RuntimeError("the engine thread has ended")
        now = time.perf_counter()
        items = [_Item(row, concurrent.futures.Future(), now, owner) for row in rows]
        with self._cond:
            if self._stopping:
                raise RuntimeError("the batcher is stopped")
            share = self._share(owner)
            if self._owned[owner] + len(items) > share:
                raise QueueFull(f"this caller has {self._owned[owner]} rows waiting; its "
                                f"share of the queue is {share} rows now")
            if self._waiting + len(items) > self.max_queue:
                raise QueueFull(f"{self._waiting} rows are waiting (at most "
                                f"{self.max_queue})")
            for item in items:
                self._enqueue(item)
            self._waiting += len(items)
            self._owned[owner] += len(items)
            self._cond.notify_all()
        self._gauge()
        return [item.future for item in items]

    def _enqueue(self, item: _Item) -> None:
        """Inserts ``item`` in start-time fair order (lock held): its start tag is the later
        of the virtual time and its owner's last finish; its cost is its tokens."""
        start = max(self._vtime, self._finish.get(item.owner, 0.0))
        item.start_tag = start
        self._finish[item.owner] = start + len(item.row.ids)
        i = len(self._queue)  # Newcomers mostly belong at the end: search from there.
        while i > 0 and self._queue[i - 1].start_tag > start:
            i -= 1
        self._queue.insert(i, item)

    def _release(self, items: Sequence[_Item]) -> None:
        """Rows that left the queue for a batch or gave up (lock held)."""
        for item in items:
            self._owned[item.owner] -= 1
            if self._owned[item.owner] <= 0:  # None of its rows wait: forget it (a
                del self._owned[item.owner]  # later row starts at the virtual time).
                self._finish.pop(item.owner, None)
            self._vtime = max(self._vtime, item.start_tag)

    # ------------------------------------------------------------------ engine thread
    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_size.labels(self.name).set(self._waiting)

    def _warmup(self) -> None:
        """Compiles every (batch, length) shape the server can run, without running them
        (compiled ahead of time: a run of each would cost more than loading it from the
        persistent cache), on ``compile_threads`` threads (XLA compiles one shape without
        the GIL while the next traces: :meth:`Engine.compile_shape` traces one at a time);
        logs the progress."""
        start = time.perf_counter()
        total = len(self.shapes)
        logger.info("%s: compiling %d shapes", self.name, total)
        step = max(1, total // 10)

        def compile_one(shape: tuple[int, int]) -> None:
            b, n = shape  # n < 0: b packed rows of -n tokens
            self.engine.compile_shape(self.kind, b, abs(n), packed=n < 0, top_k=self.top_k,
                                      num_targets=self.num_targets)
            with self._cond:
                self.compiled += 1
                done = self.compiled
            if done % step == 0 or done == total:
                logger.info("%s: %d/%d shapes compiled (%.1f s)", self.name, done, total,
                            time.perf_counter() - start)

        threads = max(1, min(self.compile_threads, total))
        if threads == 1:
            for shape in self.shapes:
                compile_one(shape)
        else:
            with concurrent.futures.ThreadPoolExecutor(threads, "compile") as pool:
                list(pool.map(compile_one, self.shapes))  # re-raises the first failure
        self.ready.set()

    def _padded(self, rows: int, longest: int) -> int:
        return (bucket_for(rows, self.engine.batch_buckets)
                * bucket_for(longest, self.engine.length_buckets))

    def _packable(self, n: int) -> bool:
        return self.pack_length is not None and n <= self.pack_length

    def _packed_rows(self, lengths: list[int]) -> int | None:
        """The row bucket ``lengths`` pack into, or None when they need more rows than a
        packed batch may have."""
        used = len(pack_sequences(lengths, self.pack_length,
                                  self.engine.pack_slots(self.pack_length)).slots)
        return next((b for b in self.pack_buckets if b >= used), None)

    def _take(self, batch: list[_Item], longest: int) -> tuple[int, bool]:
        """Moves queued rows into ``batch``; (longest row, nothing more to wait for).

        The oldest row sets the batch's length bucket; later rows join in arrival order when
        they fit that bucket (none pays for another's padding) and the padded-token bound.
        Rows that do not fit stay queued, in order, for the next batch, which then goes at
        once: the batch counts as full. Called with the lock held; a row leaves
        ``_waiting`` when its batch is dispatched (or here, when its request gave up).
        """
        lengths = self.engine.length_buckets
        # A packed batch (its oldest row packable) takes packable rows only, while they pack
        # into its largest row bucket.
        packed = bool(batch) and self._packable(len(batch[0].row.ids))
        bucket = bucket_for(longest, lengths) if batch and not packed else None
        skipped: collections.deque[_Item] = collections.deque()
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue.popleft()
            n = len(item.row.ids)
            if not batch:
                packed = self._packable(n)
            if packed:
                refuse = bool(batch) and (not self._packable(n) or self._packed_rows(
                    [len(b.row.ids) for b in batch] + [n]) is None)
            else:
                refuse = bucket is not None and (
                    bucket_for(n, lengths) > bucket
                    or self._padded(len(batch) + 1, bucket) > self.max_batch_tokens)
            if refuse:
                skipped.append(item)
                continue
            if not item.taken:
                if not item.future.set_running_or_notify_cancel():
                    self._waiting -= 1
                    self._release([item])
                    continue  # Its request gave up (timeout) while it queued.
                item.taken = True
            batch.append(item)
            longest = max(longest, n)
            if bucket is None and not packed:
                bucket = bucket_for(n, lengths)
        full = len(batch) >= self.max_batch_size or bool(skipped)
        if skipped:
            skipped.extend(self._queue)
            self._queue = skipped
        return longest, full

    def _trim(self, batch: list[_Item]) -> None:
        """Cuts ``batch`` to the largest batch bucket it fills; the rest go back to the front
        of the queue and lead the next batch. Padding rows cost as much as real ones (on a
        CPU fully), so 23 rows run as 16 now and 7 + newcomers next, not as 32. Packed
        batches pay for their tokens already and are not cut."""
        if self._packable(len(batch[0].row.ids)):
            return
        fits = [b for b in self.engine.batch_buckets if b <= len(batch)]
        if fits and fits[-1] < len(batch):
            rest = batch[fits[-1]:]
            del batch[fits[-1]:]
            self._queue.extendleft(reversed(rest))

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while True:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return None  # Stopping and drained.
                # The oldest row's wait bounds the batch's (the fair order puts a
                # newcomer's row first at times).
                deadline = min(item.enqueued for item in self._queue) + self.max_wait_s
                batch: list[_Item] = []
                longest, full = self._take(batch, 0)
                while not full and not self._stopping:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                    longest, full = self._take(batch, longest)
                if batch:
                    self._trim(batch)
                    self._busy = True
                    self._waiting -= len(batch)
                    self._release(batch)
                    return batch

    def _run(self) -> None:
        try:
            self._warmup()
        except BaseException as e:
            logger.exception("compiling the %s engine failed", self.name)
            self.failure = e
            self.ready.set()  # Waiters wake up, and see the failure.
            return
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._gauge()
                try:
                    self._run_batch(batch)
                finally:
                    with self._cond:
                        self._busy = False
        except BaseException as e:  # Outside the guarded step: a bug in the batcher itself.
            logger.exception("the %s engine thread failed", self.name)
            self.failure = e
            with self._cond:
                for item in self._queue:  # Nobody waits for a thread that is gone.
                    if not item.future.done():
                        item.future.set_exception(RuntimeError("the engine thread failed"))
                self._queue.clear()

    def _run_batch(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        rows = [item.row for item in batch]
        try:
            if self._packable(len(rows[0].ids)):
                out = self.engine.run_packed(
                    self.kind, rows, pack_length=self.pack_length,
                    num_rows=self._packed_rows([len(r.ids) for r in rows]),
                    top_k=self.top_k, num_targets=self.num_targets)
            else:
                out = self.engine.run_batch(self.kind, rows, top_k=self.top_k,
                                            num_targets=self.num_targets)
        except BaseException as e:  # A bug: every request of the batch learns of it.
            logger.exception("engine batch of %d rows failed", len(batch))
            for item in batch:
                item.future.set_exception(e)
            return
        device_s = time.perf_counter() - start
        tokens = [len(item.row.ids) for item in batch]
        total = float(sum(tokens))
        if self.metrics is not None:
            m = self.metrics
            m.batch_size.labels(self.name).observe(len(batch))
            m.batch_tokens.labels(self.name).observe(total)
            m.inference_seconds.labels(self.name).observe(device_s)
            m.device_seconds.labels(self.name).inc(device_s)
        for i, item in enumerate(batch):
            queue_s = start - item.enqueued
            if self.metrics is not None:
                self.metrics.queue_seconds.labels(self.name).observe(queue_s)
            output = tuple(a[i] for a in out)  # (scores [K], ids [K], target probs [T])
            item.future.set_result(RowResult(output=output,
                                             runtime_s=device_s * tokens[i] / total,
                                             queue_s=queue_s, batch_rows=len(batch)))
