"""The batch-scoring engine: bucketed, jit-compiled, sharded steps over a device mesh.

Every inference task (fill-mask, pseudo-log-likelihood, embeddings; see
:mod:`albert_jax.inference`) turns its inputs into :class:`Row` s (token ids, plus a position
and a target id where the step needs them) and hands *groups* of rows to
:meth:`Engine.stream`. The engine

1. takes a window of groups (``window`` rows at least, in input order), sorts its rows by
   length and packs them into batches (:mod:`albert_jax.batching`) whose shapes come from
   a small set: by default the fixed ladder ``length_buckets`` (capped at the model's
   ``max_position_embeddings``) x ``batch_buckets`` (powers of two up to ``batch_size``,
   every one a multiple of the data-parallel size ``data * fsdp``); with
   ``max_batch_tokens`` a batch holds as many rows as fit the token budget (short
   sequences in large batches, long ones in small); when the workload is known,
   :meth:`Engine.plan` picks at most a few of the ladder's lengths that minimise padded
   compute plus compile time. Padded rows are dummy sequences that attend to one token
   and whose outputs are dropped, so a run compiles at most once per (step, rows, length)
   it uses (:attr:`Engine.num_traces` counts the traces);
2. runs one ``jax.jit`` step with ``in_shardings`` / ``out_shardings`` on a
   ``(data, fsdp, tensor)`` mesh: parameters placed by their logical axis names
   (:data:`albert_jax.sharding.LOGICAL_AXIS_RULES`: replicated when ``fsdp = tensor = 1``,
   heads / FFN / vocabulary split over ``tensor``), batches split over ``data`` x ``fsdp``.
   Steps are dispatched asynchronously: batch k+1 is padded and sent while the device
   runs batch k, and results are copied to the host only ``pipeline_depth`` batches later.
   The mesh may span several processes' devices (``jax.devices()`` after
   ``jax.distributed.initialize``; :mod:`albert_jax.multihost`): then every process runs
   the same stream in lockstep, each step is one global computation into which each
   process puts only its own devices' rows (``jax.make_array_from_callback``), and a
   second small computation replicates the outputs to every process;
3. yields each group's outputs (one array, rows stacked) in input order as soon as the
   group and every group before it are complete, so memory stays bounded and results
   stream; ``progress`` is told after each batch how many groups it completed.

Steps (the ``kind`` argument):

- ``"probs"``: [V] softmax of the MLM logits at ``row.position`` (masked-LM model);
- ``"topk"``: the ``top_k`` best (probability [k], id [k]) at ``row.position``, chosen on
  the device with ``lax.top_k`` (over ``candidates`` ids only, when given), so the host
  receives k ids and scores per row instead of V probabilities;
- ``"topk_targets"``: the ``top_k`` best (probability [k], id [k]) over the whole vocabulary
  and the probabilities [T] at the row's own target ids ``row.targets`` (padded with id 0
  to a static ``num_targets`` T): one compiled step serves rows with and without targets
  alike, and the host receives 2k + T numbers per row instead of V;
- ``"logprob"``: the log-probability of ``row.target`` at ``row.position`` (scalar);
- ``"pooled"``, ``"cls"``, ``"mean"``: [H] pooler output, [CLS] hidden state, or mean of the
  last hidden states over the attended tokens (base model, ``head="base"``).

Outputs are float32 whatever the compute dtype (the model config's ``dtype``).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from albert_jax.batching import (
    Batch,
    Plan,
    bucket_for,
    fixed_batches,
    pack_sequences,
    plan_length_buckets,
    planned_batches,
)
from albert_jax.sharding import LOGICAL_AXIS_RULES, batch_sharding, make_mesh, param_shardings

__all__ = [
    "DEFAULT_BATCH_BUCKETS",
    "DEFAULT_LENGTH_BUCKETS",
    "STEP_KINDS",
    "Engine",
    "EngineOptions",
    "Row",
    "bucket_for",
    "enable_compilation_cache",
]

DEFAULT_LENGTH_BUCKETS = (16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512)
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STEP_KINDS = ("probs", "topk", "topk_targets", "logprob", "pooled", "cls", "mean")
# The steps that read one position per sequence, which :meth:`Engine.run_packed` can pack.
PACKED_KINDS = ("probs", "topk", "topk_targets", "logprob")
# The steps that choose the top k on the device (``top_k`` applies to them).
_TOPK_KINDS = ("topk", "topk_targets")
# Tracing is not thread-safe (Flax builds module classes while it traces: two threads at once
# once failed with "dictionary changed size during iteration"); compiling is, and releases
# the GIL. compile_shape traces under this lock and compiles outside it.
_TRACE_LOCK = threading.Lock()
# Plan cost model: sustained matmul rate (FLOP/s) and seconds to compile one step shape,
# per backend. Rough on purpose: the plan only needs the ratio of the two right to within
# a factor of ~2 (measured: albert-base-v2 fill-mask step, 2 shared AVX2 cores).
_PLAN_FLOPS = {"cpu": 1.5e11, "gpu": 2e14, "tpu": 1e14}
_PLAN_COMPILE_S = {"cpu": 2.0, "gpu": 3.0, "tpu": 3.0}


def enable_compilation_cache(directory: str | os.PathLike) -> None:
    """Opt-in persistent XLA compilation cache: later processes reuse compiled steps.

    See :mod:`albert_jax.compile_cache` (damaged entries are ignored with a warning).
    """
    from albert_jax.compile_cache import enable

    enable(directory)


@dataclasses.dataclass(frozen=True)
class Row:
    """One sequence to run: ids (with [CLS]/[SEP]); position and target where used;
    ``targets``: vocabulary ids whose probabilities the ``"topk_targets"`` step returns."""

    ids: Sequence[int]
    position: int = 0
    target: int = 0
    targets: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """How the engine batches and where it runs.

    ``data=-1`` puts every device not used by ``fsdp`` x ``tensor`` on ``data``; ``devices``
    defaults to ``jax.devices()`` (after ``jax.distributed.initialize``: every process's,
    grouped by process). ``max_length`` caps the length buckets (default: the
    model's ``max_position_embeddings``). ``window``: rows sorted together before results
    are yielded (bounded memory for streams). ``cache_dir``: enables the persistent
    compilation cache there. ``max_batch_tokens``: a token budget per batch (rows x padded
    length); ``batch_size`` stays the most rows a batch may hold. ``pipeline_depth``:
    batches in flight on the device before the oldest result is copied back.
    ``plan_max_shapes``: the most step shapes :meth:`Engine.plan` may choose.
    """

    batch_size: int = 32
    length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS
    max_length: int | None = None
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    devices: Sequence[Any] | None = None
    window: int = 4096
    cache_dir: str | None = None
    max_batch_tokens: int | None = None
    pipeline_depth: int = 2
    plan_max_shapes: int = 4


def _read_logits(kind: str, logits: jax.Array, target: jax.Array, top_k: int,
                 candidates: jax.Array | None, targets: jax.Array | None = None) -> Any:
    """A one-position step's output from MLM logits [..., V] (float32 whatever the compute
    dtype): ``"probs"`` [..., V]; ``"topk"`` (scores [..., k], ids [..., k]) over
    ``candidates`` when given; ``"topk_targets"`` (scores [..., k], ids [..., k],
    probabilities at ``targets`` [..., T]); ``"logprob"`` of ``target`` [...]: [...]."""
    logits = logits.astype(jnp.float32)
    if kind == "probs":
        return jax.nn.softmax(logits, axis=-1)
    if kind == "topk_targets":
        probs = jax.nn.softmax(logits, axis=-1)
        scores, ids = jax.lax.top_k(probs, top_k)
        return scores, ids, jnp.take_along_axis(probs, targets, axis=-1)
    if kind == "topk":
        probs = jax.nn.softmax(logits, axis=-1)
        if candidates is None:
            return tuple(jax.lax.top_k(probs, top_k))
        scores, index = jax.lax.top_k(probs[..., candidates], top_k)
        return scores, candidates[index]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


class Engine:
    """Runs bucketed, sharded, jit-compiled steps of one model over groups of rows.

    ``multiprocess`` is True when the mesh holds other processes' devices: then every
    process must make the same calls, in the same order (see :meth:`stream`).
    """

    def __init__(self, model: nn.Module, params: Any, options: EngineOptions | None = None,
                 **kwargs: Any) -> None:
        opts = dataclasses.replace(options or EngineOptions(), **kwargs)
        for name in ("batch_size", "window", "pipeline_depth", "plan_max_shapes"):
            value = getattr(opts, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if opts.max_batch_tokens is not None and (
            not _is_int(opts.max_batch_tokens) or opts.max_batch_tokens < 1
        ):
            raise ValueError(
                f"max_batch_tokens must be a positive integer, got {opts.max_batch_tokens!r}")
        if opts.cache_dir:
            enable_compilation_cache(opts.cache_dir)
        self.model = model
        self.options = opts
        self.vocab_size = model.config.vocab_size
        limit = model.config.max_position_embeddings
        if opts.max_length is not None:
            if not 1 <= opts.max_length <= limit:
                raise ValueError(f"max_length must be in 1..{limit}, got {opts.max_length}")
            limit = opts.max_length
        self.max_length = limit
        buckets = sorted({min(b, limit) for b in opts.length_buckets})
        if buckets[-1] < limit:
            buckets.append(limit)
        self.length_buckets = tuple(buckets)

        devices = opts.devices
        if devices is None and jax.process_count() > 1:
            # Each process's devices side by side: its rows are one block of the data axis
            # and a tensor group (tensor <= local devices) stays within one host.
            devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
        self.mesh = make_mesh(opts.data, opts.fsdp, opts.tensor, devices)
        self.data_parallel = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        dp = self.data_parallel

        def round_up(n: int) -> int:
            return -(-n // dp) * dp

        smaller = [b for b in DEFAULT_BATCH_BUCKETS if b < opts.batch_size]
        self.batch_buckets = tuple(sorted({round_up(b) for b in (*smaller, opts.batch_size)}))
        self.batch_size = self.batch_buckets[-1]
        self.max_batch_tokens = opts.max_batch_tokens
        self._plan: Plan | None = None
        # A mesh over several processes' devices (``score --distributed``): every step is
        # one global computation that all processes launch in lockstep.
        me = jax.process_index()
        self.multiprocess = any(d.process_index != me for d in self.mesh.devices.flat)
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        # Outputs to every process (replicated), in a computation of its own so that the
        # step compiles exactly as on one process.
        self._gather = jax.jit(lambda tree: tree, out_shardings=self._replicated)

        # Parameters: unboxed, placed by their logical names.
        self._param_shardings = param_shardings(params, self.mesh)
        self.params = self._put(nn.meta.unbox(params), self._param_shardings)
        self.num_traces = 0  # Traces (= compilations) of all steps: tests bound it.
        self._steps: dict[tuple, Any] = {}

    # ---------------------------------------------------------------- device steps
    def _step_fn(self, kind: str, top_k: int):
        model = self.model

        def step(params, ids, mask, position, target, extra=None):
            # extra: the candidate ids [C] ("topk"), or each row's target ids [B, T]
            # ("topk_targets").
            self.num_traces += 1
            with nn.logical_axis_rules(LOGICAL_AXIS_RULES):
                if kind in PACKED_KINDS:
                    logits = model.apply(params, ids, mask,
                                         masked_positions=position[:, None]).logits[:, 0, :]
                    return _read_logits(kind, logits, target, top_k,
                                        extra if kind == "topk" else None,
                                        extra if kind == "topk_targets" else None)
                out = model.apply(params, ids, mask)
                if kind == "pooled":
                    return out.pooler_output.astype(jnp.float32)
                hidden = out.last_hidden_state.astype(jnp.float32)
                if kind == "cls":
                    return hidden[:, 0]
                weights = mask.astype(jnp.float32)[:, :, None]
                return (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)

        return step

    def _step(self, kind: str, top_k: int = 0, with_candidates: bool = False,
              num_targets: int = 0):
        key = (kind, top_k, with_candidates, num_targets)
        if key not in self._steps:
            rows2, rows1 = batch_sharding(self.mesh, 2), batch_sharding(self.mesh, 1)
            out: Any = rows1 if kind == "logprob" else rows2
            in_shardings: tuple = (self._param_shardings, rows2, rows2, rows1, rows1)
            if kind == "topk":
                out = (rows2, rows2)
                if with_candidates:
                    in_shardings += (NamedSharding(self.mesh, PartitionSpec()),)
            if kind == "topk_targets":
                out = (rows2, rows2, rows2)
                in_shardings += (rows2,)  # The target ids [B, T].
            self._steps[key] = jax.jit(self._step_fn(kind, top_k),
                                       in_shardings=in_shardings, out_shardings=out)
        return self._steps[key]

    def _put(self, tree: Any, shardings: Any) -> Any:
        """``tree`` (the same values on every process) placed with ``shardings``. On a mesh
        over several processes each process puts only the shards its own devices hold."""
        if not self.multiprocess:
            return jax.device_put(tree, shardings)

        def put(x: Any, sharding: NamedSharding) -> jax.Array:
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

        return jax.tree.map(put, tree, shardings)

    def _check_kind(self, kind: str, top_k: int | None, candidates: Any,
                    num_targets: int | None = None) -> np.ndarray | None:
        """Validates the step arguments; the candidate ids as int32 (or None)."""
        if kind not in STEP_KINDS:
            raise ValueError(f"unknown step {kind!r} (choose from {', '.join(STEP_KINDS)})")
        if kind != "topk_targets" and num_targets is not None:
            raise ValueError(f"num_targets applies to the 'topk_targets' step, not {kind!r}")
        if kind not in _TOPK_KINDS:
            if top_k is not None or candidates is not None:
                raise ValueError(f"top_k and candidates apply to the 'topk' step, not {kind!r}")
            return None
        if not _is_int(top_k) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        if kind == "topk_targets":
            if candidates is not None:
                raise ValueError("candidates apply to the 'topk' step, not 'topk_targets' "
                                 "(which takes each row's targets)")
            if not _is_int(num_targets) or num_targets < 0:
                raise ValueError(f"num_targets must be a non-negative integer, got "
                                 f"{num_targets!r}")
            return None
        if candidates is None:
            return None  # top_k above the vocabulary size is clipped to it.
        cand = np.asarray(candidates)
        if cand.ndim != 1 or cand.size == 0 or cand.dtype.kind not in "iu":
            raise TypeError("candidates must be a non-empty 1-D sequence of integer token ids")
        if cand.min() < 0 or cand.max() >= self.vocab_size:
            bad = int(cand[(cand < 0) | (cand >= self.vocab_size)][0])
            raise ValueError(f"candidates: token id {bad} is outside the vocabulary "
                             f"0..{self.vocab_size - 1}")
        return cand.astype(np.int32)

    def _dispatch(self, kind: str, rows: Sequence[Row], num: int, length: int,
                  top_k: int, candidates: np.ndarray | None, num_targets: int = 0) -> Any:
        """Pads ``rows`` to [num, length] (their targets to [num, num_targets] for
        ``"topk_targets"``) and starts the step (asynchronously)."""
        n = len(rows)
        ids = np.zeros((num, length), dtype=np.int32)  # Pad id 0; padded keys masked out.
        mask = np.zeros((num, length), dtype=np.int32)
        position = np.zeros((num,), dtype=np.int32)
        target = np.zeros((num,), dtype=np.int32)
        for r, row in enumerate(rows):
            ids[r, : len(row.ids)] = row.ids
            mask[r, : len(row.ids)] = 1
            position[r] = row.position
            target[r] = row.target
        mask[n:, 0] = 1  # Dummy rows attend to one token: no all-masked softmax.
        k = 0
        if kind in _TOPK_KINDS:
            k = min(top_k, self.vocab_size if candidates is None else len(candidates))
        if kind != "topk_targets":
            num_targets = 0
        step = self._step(kind, k, candidates is not None, num_targets)
        inputs: tuple = (ids, mask, position, target)
        if kind == "topk_targets":
            targets = np.zeros((num, num_targets), dtype=np.int32)  # Pad id 0: dropped.
            for r, row in enumerate(rows):
                targets[r, : len(row.targets)] = row.targets
            inputs += (targets,)
        if jax.process_count() > 1:  # jit takes no numpy inputs there: jax.Arrays, on a
            # global mesh each process supplying only its own devices' rows.
            rows2, rows1 = batch_sharding(self.mesh, 2), batch_sharding(self.mesh, 1)
            shardings = (rows2, rows2, rows1, rows1) + (rows2,) * (len(inputs) - 4)
            inputs = self._put(inputs, shardings)
            if candidates is not None:
                candidates = self._put(candidates, self._replicated)
        args = (self.params, *inputs)
        if candidates is not None:
            args += (candidates,)
        with jax.set_mesh(self.mesh):
            out = step(*args)
            # Every process gets the whole batch's outputs (dispatched, not waited for).
            return self._gather(out) if self.multiprocess else out

    @staticmethod
    def _fetch(out: Any, n: int) -> Any:
        """Device outputs -> numpy, dummy rows dropped (blocks until the step is done)."""
        return jax.tree.map(lambda a: np.asarray(a)[:n], out)

    def run_batch(self, kind: str, rows: Sequence[Row], *, top_k: int | None = None,
                  candidates: Sequence[int] | None = None,
                  num_targets: int | None = None) -> Any:
        """Outputs of up to ``batch_size`` rows, padded to a bucket shape: [len(rows), ...]
        (for ``"topk"`` a pair (scores [len(rows), k], ids [len(rows), k]); for
        ``"topk_targets"`` a triple (scores [len(rows), k], ids [len(rows), k], target
        probabilities [len(rows), num_targets]), row i's first ``len(rows[i].targets)``
        entries of the last at its targets, the rest at the padding id 0)."""
        cand = self._check_kind(kind, top_k, candidates, num_targets)
        rows = self._check_rows(rows, num_targets)
        if not rows:
            raise ValueError("rows: at least one row is needed")
        n = len(rows)
        if n > self.batch_size:
            raise ValueError(f"rows: {n} rows exceed batch_size={self.batch_size}")
        num = bucket_for(n, self.batch_buckets)
        length = bucket_for(max(len(r.ids) for r in rows), self.length_buckets)
        return self._fetch(self._dispatch(kind, rows, num, length, top_k or 0, cand,
                                          num_targets or 0), n)

    # ---------------------------------------------------------------- packed steps
    @staticmethod
    def pack_slots(pack_length: int) -> int:
        """Most sequences one packed row holds (the MLM head runs at that many positions of
        every row; at 8+ tokens a sequence, a row of ``pack_length`` never needs more)."""
        return max(1, pack_length // 8)

    def pack_row_buckets(self, pack_length: int, max_tokens: int,
                         per_octave: int = 4) -> tuple[int, ...]:
        """Row counts a packed batch is padded to, up to ``max_tokens // pack_length`` rows:
        ``per_octave`` steps between powers of two (4: 1, 2, ..., 8, 10, 12, 14, 16, 20,
        24, ...; 2: 1, 2, 3, 4, 6, 8, 12, 16, 24, ...), each times the data-parallel size.
        Finer than powers of two (a packed batch should pay for its tokens), with waste
        under 1 / (per_octave + 1) and few shapes to compile."""
        if not _is_int(per_octave) or per_octave < 1:
            raise ValueError(f"per_octave must be a positive integer, got {per_octave!r}")
        top = max(max_tokens // pack_length // self.data_parallel, 1)
        ladder, r = [], 1
        while r < top:
            ladder.append(r)
            r += max(1, (1 << (r.bit_length() - 1)) // per_octave)
        ladder.append(top)
        return tuple(sorted({r * self.data_parallel for r in ladder}))

    def _packed_step(self, kind: str, top_k: int, with_candidates: bool,
                     num_targets: int = 0):
        key = ("packed", kind, top_k, with_candidates, num_targets)
        if key not in self._steps:
            model = self.model

            def step(params, ids, mask, positions, masked, target, extra=None):
                # extra: the candidate ids [C] ("topk"), or each slot's target ids
                # [R, slots, T] ("topk_targets").
                self.num_traces += 1
                with nn.logical_axis_rules(LOGICAL_AXIS_RULES):
                    logits = model.apply(params, ids, mask, position_ids=positions,
                                         masked_positions=masked).logits  # [R, slots, V]
                return _read_logits(kind, logits, target, top_k,
                                    extra if kind == "topk" else None,
                                    extra if kind == "topk_targets" else None)

            rows2, rows3 = batch_sharding(self.mesh, 2), batch_sharding(self.mesh, 3)
            in_shardings: tuple = (self._param_shardings, rows2, rows3, rows2, rows2, rows2)
            out: Any = {"probs": rows3, "topk": (rows3, rows3),
                        "topk_targets": (rows3, rows3, rows3), "logprob": rows2}[kind]
            if with_candidates:
                in_shardings += (NamedSharding(self.mesh, PartitionSpec()),)
            if kind == "topk_targets":
                in_shardings += (rows3,)  # The target ids [R, slots, T].
            self._steps[key] = jax.jit(step, in_shardings=in_shardings, out_shardings=out)
        return self._steps[key]

    def run_packed(self, kind: str, rows: Sequence[Row], *, pack_length: int,
                   num_rows: int | None = None, top_k: int | None = None,
                   candidates: Sequence[int] | None = None,
                   num_targets: int | None = None) -> Any:
        """:meth:`run_batch` for the one-position steps (:data:`PACKED_KINDS`), with the
        sequences packed several to a row of ``pack_length`` tokens (first-fit decreasing)
        instead of one per row padded to a length bucket: outputs [len(rows), ...].

        Each sequence attends only to itself (a [rows, L, L] block-diagonal attention mask)
        and its positions restart at 0, so its output is the one it has alone, up to float
        rounding. The batch is padded to ``num_rows`` rows (default: the smallest of
        :meth:`pack_row_buckets` that holds it); a run compiles once per row count.
        """
        if kind not in PACKED_KINDS:
            raise ValueError(f"only the {', '.join(PACKED_KINDS)} steps can be packed, "
                             f"not {kind!r}")
        cand = self._check_kind(kind, top_k, candidates, num_targets)
        rows = self._check_rows(rows, num_targets)
        if not rows:
            raise ValueError("rows: at least one row is needed")
        # Positions restart in every packed sequence: a row may be longer than the model's
        # max_position_embeddings (each sequence is still at most max_length).
        if not _is_int(pack_length) or pack_length < 1:
            raise ValueError(f"pack_length must be a positive integer, got {pack_length!r}")
        slots = self.pack_slots(pack_length)
        packing = pack_sequences([len(r.ids) for r in rows], pack_length, slots)
        used = len(packing.slots)
        if num_rows is None:
            dp = self.data_parallel
            num_rows = -(-used // dp) * dp
        if num_rows < used or num_rows % self.data_parallel:
            raise ValueError(f"num_rows={num_rows} cannot hold the {used} packed rows (or is "
                             f"not a multiple of {self.data_parallel})")
        shape = (num_rows, pack_length)
        ids, positions = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
        mask = np.zeros((*shape, pack_length), np.bool_)
        masked, target = np.zeros((num_rows, slots), np.int32), np.zeros((num_rows, slots),
                                                                          np.int32)
        # Each slot's target ids ("topk_targets"), padded with id 0 (dropped on the host).
        targets = np.zeros((num_rows, slots, num_targets or 0), np.int32)
        for i, row in enumerate(rows):
            r, a, n = packing.row[i], packing.offset[i], len(row.ids)
            ids[r, a: a + n] = row.ids
            positions[r, a: a + n] = np.arange(n)
            mask[r, a: a + n, a: a + n] = True
            masked[r, packing.slot[i]] = a + row.position
            target[r, packing.slot[i]] = row.target
            if kind == "topk_targets":
                targets[r, packing.slot[i], : len(row.targets)] = row.targets
        # Padding tokens attend to themselves: no all-masked softmax row (NaN-free).
        free_row, free_token = np.nonzero(~mask.any(axis=-1))
        mask[free_row, free_token, free_token] = True
        k = 0
        if kind in _TOPK_KINDS:
            k = min(top_k, self.vocab_size if cand is None else len(cand))
        step = self._packed_step(kind, k, cand is not None, num_targets or 0)
        args = (self.params, ids, mask, positions, masked, target)
        if cand is not None:
            args += (cand,)
        if kind == "topk_targets":
            args += (targets,)
        with jax.set_mesh(self.mesh):
            out = step(*args)
        where = (np.asarray(packing.row), np.asarray(packing.slot))
        return jax.tree.map(lambda a: np.asarray(a)[where], out)

    def compile_shape(self, kind: str, rows: int, length: int, *, packed: bool = False,
                      top_k: int | None = None, num_targets: int | None = None) -> None:
        """Compiles the step ``kind`` for a batch of ``rows`` x ``length`` tokens (``packed``:
        ``rows`` packed rows of ``length`` tokens, as :meth:`run_packed` runs them) without
        running it: a later batch of that shape finds it compiled. Warming a server this way
        costs compile time only, not a run of every shape (most of a warm start)."""
        self._check_kind(kind, top_k, None, num_targets)
        k = min(top_k, self.vocab_size) if kind in _TOPK_KINDS else 0
        t = num_targets or 0
        i32 = np.int32
        if packed:
            slots = self.pack_slots(length)
            step = self._packed_step(kind, k, False, t)
            args: tuple = (self.params, np.zeros((rows, length), i32),
                           np.zeros((rows, length, length), np.bool_),
                           np.zeros((rows, length), i32), np.zeros((rows, slots), i32),
                           np.zeros((rows, slots), i32))
            if kind == "topk_targets":
                args += (np.zeros((rows, slots, t), i32),)
        else:
            step = self._step(kind, k, False, t)
            args = (self.params, np.zeros((rows, length), i32), np.zeros((rows, length), i32),
                    np.zeros((rows,), i32), np.zeros((rows,), i32))
            if kind == "topk_targets":
                args += (np.zeros((rows, t), i32),)
        if self.multiprocess:  # Inputs are global jax.Arrays there: run one batch instead.
            row = [Row([1] * (1 if packed else length), position=0)]
            if packed:
                self.run_packed(kind, row, pack_length=length, num_rows=rows, top_k=top_k,
                                num_targets=num_targets)
            else:
                self.run_batch(kind, row * rows, top_k=top_k, num_targets=num_targets)
            return
        with jax.set_mesh(self.mesh):
            with _TRACE_LOCK:
                lowered = step.lower(*args)
            lowered.compile()

    # ---------------------------------------------------------------- host side
    def check(self, ids: Sequence[int], position: int | None = None,
              target: int | None = None, targets: Sequence[int] | None = None) -> None:
        """ValueError/TypeError naming the argument when a sequence is empty, longer than
        the engine accepts, holds ids outside the vocabulary, or its position (index into
        ids), target (a vocabulary id) or targets (vocabulary ids) are out of range."""
        if isinstance(ids, (str, bytes, Mapping)) or not hasattr(ids, "__len__"):
            raise TypeError(f"ids must be a sequence of integer token ids, got "
                            f"{type(ids).__name__}")
        if len(ids) == 0:
            raise ValueError("empty sequence")
        if len(ids) > self.max_length:
            raise ValueError(f"{len(ids)} tokens long; at most {self.max_length} are accepted")
        self._check_vocab_ids("ids", ids)
        if position is not None:
            if not _is_int(position):
                raise TypeError(f"position must be an integer, got {type(position).__name__}")
            if not 0 <= position < len(ids):
                raise ValueError(f"position {position} is outside the sequence "
                                 f"(0..{len(ids) - 1})")
        if target is not None:
            if not _is_int(target):
                raise TypeError(f"target must be an integer, got {type(target).__name__}")
            if not 0 <= target < self.vocab_size:
                raise ValueError(f"target {target} is outside the vocabulary "
                                 f"0..{self.vocab_size - 1}")
        if targets is not None:
            if isinstance(targets, (str, bytes, Mapping)) or not hasattr(targets, "__len__"):
                raise TypeError(f"targets must be a sequence of integer token ids, got "
                                f"{type(targets).__name__}")
            if len(targets):
                self._check_vocab_ids("targets", targets)

    def _check_vocab_ids(self, name: str, values: Sequence[int]) -> None:
        """TypeError unless ``values`` (non-empty) is 1-D integer ids; ValueError naming the
        first id outside the vocabulary."""
        arr = np.asarray(values)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must be a sequence of integer token ids")
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"{name}: token id {bad} is outside the vocabulary "
                             f"0..{self.vocab_size - 1}")

    def _check_rows(self, rows: Any, num_targets: int | None = None) -> list[Row]:
        """``rows`` as a list, each checked; ``num_targets``: the most targets a row may
        have (the ``"topk_targets"`` step's T)."""
        if isinstance(rows, (Row, Mapping, str, bytes)) or not isinstance(rows, Iterable):
            raise TypeError(f"a group must be a sequence of Row, got {type(rows).__name__}")
        rows = list(rows)
        for row in rows:
            if not isinstance(row, Row):
                raise TypeError(f"rows must be Row instances, got {type(row).__name__}")
            self.check(row.ids, row.position, row.target, row.targets)
            if num_targets is not None and len(row.targets) > num_targets:
                raise ValueError(f"targets: {len(row.targets)} target ids; the step scores "
                                 f"at most num_targets={num_targets}")
        return rows

    # ---------------------------------------------------------------- shape plans
    def _row_seconds(self, length: int, kind_flops: float) -> float:
        cfg = self.model.config
        h, i = cfg.hidden_size, cfg.intermediate_size
        per_layer = 2 * length * (4 * h * h + 2 * h * i) + 4 * length * length * h
        flops = cfg.num_hidden_layers * per_layer + 2 * length * cfg.embedding_size * h
        platform = self.mesh.devices.flat[0].platform
        rate = _PLAN_FLOPS.get(platform, _PLAN_FLOPS["gpu"]) * self.mesh.devices.size
        return (flops + kind_flops) / rate

    def plan(self, lengths: Sequence[int], *, compile_seconds: float | None = None,
             max_shapes: int | None = None) -> Plan:
        """Chooses the length buckets for a known workload (the lengths of every row it
        will run) and uses them from now on (until :meth:`clear_plan`).

        At most ``max_shapes`` (default ``options.plan_max_shapes``) step shapes, picked
        from the ladder to minimise padded compute plus ``compile_seconds`` per shape
        (default: an estimate for the backend). Rows longer than the plan (a later,
        different workload) fall back to the fixed ladder.
        """
        cfg = self.model.config
        head = 2 * (cfg.hidden_size * cfg.embedding_size
                    + cfg.embedding_size * cfg.vocab_size)  # MLM projection at one position.
        platform = self.mesh.devices.flat[0].platform
        plan = plan_length_buckets(
            [min(n, self.max_length) for n in lengths], self.length_buckets,
            self.batch_buckets, max_batch_tokens=self.max_batch_tokens,
            max_shapes=max_shapes or self.options.plan_max_shapes,
            row_seconds=lambda n: self._row_seconds(n, head),
            compile_seconds=(compile_seconds if compile_seconds is not None
                             else _PLAN_COMPILE_S.get(platform, 3.0)),
        )
        self._plan = plan if plan.rows else None
        return plan

    def clear_plan(self) -> None:
        """Back to the fixed ladder of shapes."""
        self._plan = None

    def _batches(self, sorted_lengths: Sequence[int]) -> list[Batch]:
        plan = self._plan
        if plan is not None and sorted_lengths and sorted_lengths[-1] <= plan.length_buckets[-1]:
            return planned_batches(sorted_lengths, plan, self.batch_buckets)
        return fixed_batches(sorted_lengths, self.length_buckets, self.batch_buckets,
                             self.max_batch_tokens)

    # ---------------------------------------------------------------- streaming
    def _run_window(self, kind: str, groups: list[list[Row]], top_k: int,
                    candidates: np.ndarray | None,
                    progress: Callable[[int], None] | None,
                    num_targets: int = 0) -> Iterator[Any]:
        flat = [(g, row) for g, rows in enumerate(groups) for row in rows]
        order = sorted(range(len(flat)), key=lambda i: len(flat[i][1].ids))
        batches = self._batches([len(flat[i][1].ids) for i in order])
        results: list[Any] = [None] * len(flat)
        remaining = [len(rows) for rows in groups]
        first = [0] * len(groups)  # Index in `flat` of each group's first row.
        for idx in range(len(flat) - 1, -1, -1):
            first[flat[idx][0]] = idx
        done = 0  # Groups yielded so far (a prefix of the window).
        pending: collections.deque = collections.deque()

        def finish() -> int:
            chunk, out = pending.popleft()
            host = self._fetch(out, len(chunk))
            completed = 0
            for j, i in enumerate(chunk):
                results[i] = jax.tree.map(lambda a, j=j: a[j], host)
                g = flat[i][0]
                remaining[g] -= 1
                completed += remaining[g] == 0
            if progress is not None and completed:
                progress(completed)
            return completed

        def ready() -> Iterator[Any]:
            nonlocal done
            while done < len(groups) and remaining[done] == 0:
                n = len(groups[done])
                outs = results[first[done]: first[done] + n] if n else []
                yield (jax.tree.map(lambda *xs: np.stack(xs), *outs) if outs
                       else np.zeros((0,), np.float32))
                for i in range(first[done], first[done] + n):
                    results[i] = None  # Yielded: free it.
                done += 1

        yield from ready()  # Empty groups at the front.
        for batch in batches:
            chunk = order[batch.start: batch.stop]
            rows = [flat[i][1] for i in chunk]
            pending.append((chunk, self._dispatch(kind, rows, batch.rows, batch.length,
                                                  top_k, candidates, num_targets)))
            if len(pending) > self.options.pipeline_depth:
                finish()
                yield from ready()
        while pending:
            finish()
            yield from ready()
        yield from ready()

    def stream(self, kind: str, groups: Iterable[Sequence[Row]], *, top_k: int | None = None,
               candidates: Sequence[int] | None = None,
               progress: Callable[[int], None] | None = None,
               num_targets: int | None = None) -> Iterator[Any]:
        """Yields, for each group of rows in input order, its outputs stacked: [rows, ...]
        (``"topk"``: a pair (scores [rows, k], ids [rows, k]), best first;
        ``"topk_targets"``: a triple, those and target probabilities [rows, num_targets]).

        On a mesh over several processes' devices (:attr:`multiprocess`), every process
        must call this with the same groups (so that all form the same batches and launch
        the same steps in the same order); each step is one global computation, each
        process supplying the rows its devices hold, and every process yields all outputs.

        Rows are sorted and batched across groups within windows of ``options.window``
        rows; a group is never split between windows. A group is yielded as soon as it
        and every earlier group are complete; ``progress(n)`` is called after each batch
        with the number of groups it completed (in any order). TypeError for a group that
        is not a sequence of :class:`Row`, ValueError naming the bad argument otherwise.
        """
        cand = self._check_kind(kind, top_k, candidates, num_targets)
        if isinstance(groups, (Mapping, str, bytes)) or not isinstance(groups, Iterable):
            raise TypeError(f"groups must be an iterable of sequences of Row, got "
                            f"{type(groups).__name__}")
        window: list[list[Row]] = []
        size = 0
        for group in groups:
            window.append(self._check_rows(group, num_targets))
            size += len(window[-1])
            if size >= self.options.window:
                yield from self._run_window(kind, window, top_k or 0, cand, progress,
                                            num_targets or 0)
                window, size = [], 0
        if window:
            yield from self._run_window(kind, window, top_k or 0, cand, progress,
                                        num_targets or 0)

    def run(self, kind: str, groups: Iterable[Sequence[Row]], **kwargs: Any) -> list[Any]:
        """:meth:`stream` as a list."""
        return list(self.stream(kind, groups, **kwargs))

    def run_rows(self, kind: str, rows: Sequence[Row], **kwargs: Any) -> Any:
        """One output per row, in input order: [len(rows), ...]."""
        rows = self._check_rows(rows)
        outs = self.run(kind, ([row] for row in rows), **kwargs)
        if not outs:
            return np.zeros((0,), np.float32)
        return jax.tree.map(lambda *xs: np.stack([x[0] for x in xs]), *outs)
