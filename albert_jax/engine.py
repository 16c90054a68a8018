"""The batch-scoring engine: bucketed, jit-compiled, sharded steps over a device mesh.

Every inference task (fill-mask, pseudo-log-likelihood, embeddings; see
:mod:`albert_jax.inference`) turns its inputs into :class:`Row` s (token ids, plus a position
and a target id where the step needs them) and hands *groups* of rows to
:meth:`Engine.stream`. The engine

1. takes a window of groups (``window`` rows at least, in input order), sorts its rows by
   length and packs them into batches whose shapes come from a fixed set: ``length_buckets``
   (capped at the model's ``max_position_embeddings``) x ``batch_buckets`` (powers of two
   up to ``batch_size``, every one a multiple of the data-parallel size ``data * fsdp``);
   padded rows are dummy sequences that attend to one token and whose outputs are dropped,
   so a run compiles at most once per (step, rows, length) it uses
   (:attr:`Engine.num_traces` counts the traces);
2. runs one ``jax.jit`` step with ``in_shardings`` / ``out_shardings`` on a
   ``(data, fsdp, tensor)`` mesh: parameters placed by their logical axis names
   (:data:`albert_jax.sharding.LOGICAL_AXIS_RULES`: replicated when ``fsdp = tensor = 1``,
   heads / FFN / vocabulary split over ``tensor``), batches split over ``data`` x ``fsdp``;
3. yields each group's outputs (one array, rows stacked) in input order, window by window,
   so memory stays bounded and results stream.

Steps (the ``kind`` argument):

- ``"probs"``: [V] softmax of the MLM logits at ``row.position`` (masked-LM model);
- ``"logprob"``: the log-probability of ``row.target`` at ``row.position`` (scalar);
- ``"pooled"``, ``"cls"``, ``"mean"``: [H] pooler output, [CLS] hidden state, or mean of the
  last hidden states over the attended tokens (base model, ``head="base"``).

Outputs are float32 whatever the compute dtype (the model config's ``dtype``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from albert_jax.sharding import LOGICAL_AXIS_RULES, batch_sharding, make_mesh, param_shardings

DEFAULT_LENGTH_BUCKETS = (16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512)
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STEP_KINDS = ("probs", "logprob", "pooled", "cls", "mean")


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n (buckets sorted ascending); ValueError if none fits."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


def enable_compilation_cache(directory: str | os.PathLike) -> None:
    """Opt-in persistent XLA compilation cache: later processes reuse compiled steps."""
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.fspath(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@dataclasses.dataclass(frozen=True)
class Row:
    """One sequence to run: ids (with [CLS]/[SEP]); position and target where used."""

    ids: Sequence[int]
    position: int = 0
    target: int = 0


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """How the engine batches and where it runs.

    ``data=-1`` puts every device not used by ``fsdp`` x ``tensor`` on ``data``; ``devices``
    defaults to ``jax.devices()``. ``max_length`` caps the length buckets (default: the
    model's ``max_position_embeddings``). ``window``: rows sorted together before results
    are yielded (bounded memory for streams). ``cache_dir``: enables the persistent
    compilation cache there.
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


class Engine:
    """Runs bucketed, sharded, jit-compiled steps of one model over groups of rows."""

    def __init__(self, model: nn.Module, params: Any, options: EngineOptions | None = None,
                 **kwargs: Any) -> None:
        opts = dataclasses.replace(options or EngineOptions(), **kwargs)
        if opts.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {opts.batch_size}")
        if opts.cache_dir:
            enable_compilation_cache(opts.cache_dir)
        self.model = model
        self.options = opts
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

        self.mesh = make_mesh(opts.data, opts.fsdp, opts.tensor, opts.devices)
        self.data_parallel = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        dp = self.data_parallel

        def round_up(n: int) -> int:
            return -(-n // dp) * dp

        smaller = [b for b in DEFAULT_BATCH_BUCKETS if b < opts.batch_size]
        self.batch_buckets = tuple(sorted({round_up(b) for b in (*smaller, opts.batch_size)}))
        self.batch_size = self.batch_buckets[-1]

        # Parameters: unboxed, placed by their logical names.
        self._param_shardings = param_shardings(params, self.mesh)
        self.params = jax.device_put(nn.meta.unbox(params), self._param_shardings)
        self.num_traces = 0  # Traces (= compilations) of all steps: tests bound it.
        self._steps: dict[str, Any] = {}

    # ---------------------------------------------------------------- device steps
    def _step_fn(self, kind: str):
        model = self.model

        def step(params, ids, mask, position, target):
            self.num_traces += 1
            with nn.logical_axis_rules(LOGICAL_AXIS_RULES):
                if kind in ("probs", "logprob"):
                    logits = model.apply(params, ids, mask,
                                         masked_positions=position[:, None]).logits[:, 0, :]
                    logits = logits.astype(jnp.float32)
                    if kind == "probs":
                        return jax.nn.softmax(logits, axis=-1)
                    logp = jax.nn.log_softmax(logits, axis=-1)
                    return jnp.take_along_axis(logp, target[:, None], axis=1)[:, 0]
                out = model.apply(params, ids, mask)
                if kind == "pooled":
                    return out.pooler_output.astype(jnp.float32)
                hidden = out.last_hidden_state.astype(jnp.float32)
                if kind == "cls":
                    return hidden[:, 0]
                weights = mask.astype(jnp.float32)[:, :, None]
                return (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)

        return step

    def _step(self, kind: str):
        if kind not in STEP_KINDS:
            raise ValueError(f"unknown step {kind!r} (choose from {', '.join(STEP_KINDS)})")
        if kind not in self._steps:
            rows2, rows1 = batch_sharding(self.mesh, 2), batch_sharding(self.mesh, 1)
            out = rows1 if kind == "logprob" else rows2
            self._steps[kind] = jax.jit(
                self._step_fn(kind),
                in_shardings=(self._param_shardings, rows2, rows2, rows1, rows1),
                out_shardings=out,
            )
        return self._steps[kind]

    def run_batch(self, kind: str, rows: Sequence[Row]) -> np.ndarray:
        """Outputs of up to ``batch_size`` rows, padded to a bucket shape: [len(rows), ...]."""
        n = len(rows)
        num = bucket_for(n, self.batch_buckets)
        length = bucket_for(max(len(r.ids) for r in rows), self.length_buckets)
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
        with jax.set_mesh(self.mesh):
            out = self._step(kind)(self.params, ids, mask, position, target)
        return np.asarray(out)[:n]

    # ---------------------------------------------------------------- host side
    def check(self, ids: Sequence[int]) -> None:
        """ValueError when a sequence is empty or longer than the engine accepts."""
        if not ids:
            raise ValueError("empty sequence")
        if len(ids) > self.max_length:
            raise ValueError(f"{len(ids)} tokens long; at most {self.max_length} are accepted")

    def _run_window(self, kind: str, groups: list[Sequence[Row]]) -> list[np.ndarray]:
        flat = [(g, row) for g, rows in enumerate(groups) for row in rows]
        for _, row in flat:
            self.check(row.ids)
        order = sorted(range(len(flat)), key=lambda i: len(flat[i][1].ids))
        results: list[Any] = [None] * len(flat)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out = self.run_batch(kind, [flat[i][1] for i in chunk])
            for j, i in enumerate(chunk):
                results[i] = out[j]
        per_group: list[list[np.ndarray]] = [[] for _ in groups]
        for (g, _), res in zip(flat, results, strict=True):
            per_group[g].append(res)
        return [np.stack(p) if p else np.zeros((0,), np.float32) for p in per_group]

    def stream(self, kind: str, groups: Iterable[Sequence[Row]]) -> Iterator[np.ndarray]:
        """Yields, for each group of rows in input order, its outputs stacked: [rows, ...].

        Rows are sorted and batched across groups within windows of ``options.window``
        rows; a group is never split between windows.
        """
        window: list[Sequence[Row]] = []
        size = 0
        for group in groups:
            window.append(group)
            size += len(group)
            if size >= self.options.window:
                yield from self._run_window(kind, window)
                window, size = [], 0
        if window:
            yield from self._run_window(kind, window)

    def run(self, kind: str, groups: Iterable[Sequence[Row]]) -> list[np.ndarray]:
        """:meth:`stream` as a list."""
        return list(self.stream(kind, groups))

    def run_rows(self, kind: str, rows: Sequence[Row]) -> np.ndarray:
        """One output per row, in input order: [len(rows), ...]."""
        outs = self.run(kind, ([row] for row in rows))
        return np.stack([o[0] for o in outs]) if outs else np.zeros((0,), np.float32)
