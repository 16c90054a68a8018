"""Host-side batch planning of the scoring engine: which rows go together, in which shape.

Rows are sorted by length and cut into batches whose shapes come from a small set, so that
a run compiles once per shape it uses. Two ways to choose that set:

- the fixed ladder (:func:`fixed_batches`): length buckets ``16, 24, ..., 512`` and row
  counts that are powers of two; used when the workload is not known in advance (serving);
- a plan for a known workload (:func:`plan_length_buckets`, then :func:`planned_batches`):
  at most a few of the ladder's lengths, chosen to minimise padded compute plus compile
  time for those exact lengths (a dynamic programme over the sorted lengths).

Both honour a row cap per length (``rows_cap``): ``batch_size``, or with a token budget
(``max_batch_tokens``, as in text-embeddings-inference) as many rows as fit, so that short
sequences go in large batches and long ones in small.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Sequence


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n (buckets sorted ascending); ValueError if none fits."""
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]


def rows_cap(length: int, batch_buckets: Sequence[int], max_batch_tokens: int | None) -> int:
    """Most rows one batch of ``length``-token rows may hold: the largest batch bucket
    within the token budget (all of ``batch_buckets`` without one), at least the smallest."""
    if max_batch_tokens is None:
        return batch_buckets[-1]
    fitting = [b for b in batch_buckets if b * length <= max_batch_tokens]
    return fitting[-1] if fitting else batch_buckets[0]


@dataclasses.dataclass(frozen=True)
class Batch:
    """Rows ``start:stop`` of the length-sorted order, padded to ``rows`` x ``length``."""

    start: int
    stop: int
    rows: int
    length: int


def fixed_batches(
    sorted_lengths: Sequence[int], length_buckets: Sequence[int],
    batch_buckets: Sequence[int], max_batch_tokens: int | None = None,
) -> list[Batch]:
    """Greedy batches over ascending lengths: a batch grows while its row cap (set by the
    bucket of its longest row) allows; rows are rounded up to a batch bucket."""
    out: list[Batch] = []
    i, n = 0, len(sorted_lengths)
    while i < n:
        j = i + 1
        while j < n:
            length = bucket_for(sorted_lengths[j], length_buckets)
            if j + 1 - i > rows_cap(length, batch_buckets, max_batch_tokens):
                break
            j += 1
        length = bucket_for(sorted_lengths[j - 1], length_buckets)
        out.append(Batch(i, j, bucket_for(j - i, batch_buckets), length))
        i = j
    return out


@dataclasses.dataclass(frozen=True)
class Plan:
    """Shapes chosen for a known workload: per length bucket, the allowed row counts
    (the full batch, and possibly one smaller count for the remainder)."""

    rows: dict[int, tuple[int, ...]]
    estimated_s: float

    @property
    def length_buckets(self) -> tuple[int, ...]:
        return tuple(sorted(self.rows))

    @property
    def num_shapes(self) -> int:
        return sum(len(r) for r in self.rows.values())


def _segment(count: int, length: int, cap: int, batch_buckets: Sequence[int],
             row_cost: float, shape_cost: float) -> tuple[float, tuple[int, ...]]:
    """Cost and row counts of ``count`` rows in one length bucket: full batches of ``cap``
    rows, the remainder padded to ``cap`` (one shape) or to its own batch bucket (two)."""
    full, rest = divmod(count, cap)
    if rest == 0:
        return full * cap * row_cost + shape_cost, (cap,)
    padded = (full + 1) * cap * row_cost + shape_cost
    small = bucket_for(rest, batch_buckets)
    if full == 0:  # Only the remainder: its own bucket, one shape.
        return small * row_cost + shape_cost, (small,)
    split = (full * cap + small) * row_cost + 2 * shape_cost
    return (padded, (cap,)) if padded <= split else (split, (small, cap))


def plan_length_buckets(
    lengths: Sequence[int], length_buckets: Sequence[int], batch_buckets: Sequence[int],
    *, max_batch_tokens: int | None = None, max_shapes: int = 4,
    row_seconds: Callable[[int], float], compile_seconds: float,
) -> Plan:
    """The subset of ``length_buckets`` (at most ``max_shapes`` shapes) that minimises the
    estimated time of running ``lengths``: padded compute (``row_seconds(L)`` per padded
    row of bucket length ``L``) plus ``compile_seconds`` per compiled shape.

    Exact for :func:`planned_batches` over the whole workload (a dynamic programme over
    the buckets: the last chosen bucket must hold the longest row).
    """
    if not lengths:
        return Plan({}, 0.0)
    ladder = [b for b in length_buckets if b >= min(lengths)]
    top = bucket_for(max(lengths), length_buckets)
    ladder = [b for b in ladder if b <= top]
    srt = sorted(lengths)
    # upto[k]: rows whose length fits ladder[k].
    upto = [bisect.bisect_right(srt, b) for b in ladder]
    m = len(ladder)
    # best[s][k]: (cost, rows plan) covering rows up to ladder[k] with ladder[k] chosen,
    # using s shapes.
    best: list[list[tuple[float, dict[int, tuple[int, ...]]] | None]] = [
        [None] * m for _ in range(max_shapes + 1)
    ]
    for k in range(m):
        for prev in range(-1, k):
            count = upto[k] - (upto[prev] if prev >= 0 else 0)
            if count == 0:
                continue
            cap = rows_cap(ladder[k], batch_buckets, max_batch_tokens)
            cost, rows = _segment(count, ladder[k], cap, batch_buckets,
                                  row_seconds(ladder[k]), compile_seconds)
            for s in range(len(rows), max_shapes + 1):
                if prev == -1:
                    base: tuple[float, dict] | None = (0.0, {}) if s == len(rows) else None
                else:
                    base = best[s - len(rows)][prev]
                if base is None:
                    continue
                total = base[0] + cost
                current = best[s][k]
                if current is None or total < current[0]:
                    best[s][k] = (total, {**base[1], ladder[k]: rows})
    last = m - 1
    options = [best[s][last] for s in range(max_shapes + 1) if best[s][last] is not None]
    if not options:  # max_shapes too small for a split: one bucket, remainder padded.
        cap = rows_cap(top, batch_buckets, max_batch_tokens)
        full = -(-len(srt) // cap)
        return Plan({top: (min(cap, bucket_for(len(srt), batch_buckets)),)},
                    full * cap * row_seconds(top) + compile_seconds)
    cost, rows = min(options, key=lambda o: o[0])
    return Plan(rows, cost)


def planned_batches(
    sorted_lengths: Sequence[int], plan: Plan, batch_buckets: Sequence[int],
) -> list[Batch]:
    """Batches over ascending lengths under a plan: rows grouped by their planned length
    bucket, cut into full batches; a remainder takes the smallest allowed row count that
    holds it. ValueError for a row longer than the plan's longest bucket."""
    buckets = plan.length_buckets
    out: list[Batch] = []
    i, n = 0, len(sorted_lengths)
    while i < n:
        if sorted_lengths[i] > buckets[-1]:
            raise ValueError(f"{sorted_lengths[i]} tokens exceed the planned buckets")
        length = bucket_for(sorted_lengths[i], buckets)
        allowed = plan.rows[length]
        j = bisect.bisect_right(sorted_lengths, length, lo=i)
        while i < j:
            take = min(j - i, allowed[-1])
            out.append(Batch(i, i + take, bucket_for(take, allowed), length))
            i += take
    return out


@dataclasses.dataclass(frozen=True)
class Packing:
    """Several sequences per row: ``slots[r]`` lists the inputs packed into row ``r`` (input
    indices, in the order they sit in the row); input ``i`` lies in row ``row[i]`` at slot
    ``slot[i]``, from token ``offset[i]`` on."""

    slots: tuple[tuple[int, ...], ...]
    row: tuple[int, ...]
    slot: tuple[int, ...]
    offset: tuple[int, ...]


def pack_sequences(lengths: Sequence[int], row_length: int, max_slots: int) -> Packing:
    """First-fit decreasing: the longest sequences first, each into the first row with room
    for it (at most ``max_slots`` sequences per row). Padding-free batching, as in
    text-embeddings-inference: a batch costs its tokens, not rows x longest. ValueError for
    a sequence longer than ``row_length``."""
    if any(n > row_length or n < 1 for n in lengths):
        raise ValueError(f"every sequence must have 1..{row_length} tokens to be packed")
    used: list[int] = []
    slots: list[list[int]] = []
    row, slot, offset = [0] * len(lengths), [0] * len(lengths), [0] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r in range(len(used))
                  if used[r] + lengths[i] <= row_length and len(slots[r]) < max_slots), None)
        if r is None:
            r = len(used)
            used.append(0)
            slots.append([])
        row[i], slot[i], offset[i] = r, len(slots[r]), used[r]
        slots[r].append(i)
        used[r] += lengths[i]
    return Packing(tuple(map(tuple, slots)), tuple(row), tuple(slot), tuple(offset))
