"""Inference tasks over the batch-scoring engine: fill-mask, pseudo-log-likelihood, embeddings.

All three go through :class:`albert_jax.engine.Engine`: inputs are sorted by length and
packed into batches whose shapes come from a small fixed set (``length_buckets`` x
``batch_buckets``), so a run compiles at most once per shape it uses, whatever the mix of
input lengths; batches are sharded over the ``data`` axis of a device mesh. The vocabulary
projection (H -> E -> V) runs only at the masked position of each row: [B, 1, V] instead
of [B, S, V].

- :class:`FillMask`: transformers' fill-mask pipeline format.
- :class:`PseudoLogLikelihood`: PLL sentence scores (Salazar et al. 2020), optionally
  PLL-word-l2r (the pieces of the same word to the right of the scored piece are masked
  too).
- :class:`Embedder`: pooled output, [CLS] hidden state or masked mean of the last layer.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from albert_jax.engine import (
    DEFAULT_BATCH_BUCKETS,
    DEFAULT_LENGTH_BUCKETS,
    Engine,
    EngineOptions,
    Row,
    bucket_for,
)
from albert_jax.model import AlbertForMaskedLM
from albert_jax.tokenizer import AlbertTokenizer

__all__ = [
    "DEFAULT_BATCH_BUCKETS",
    "DEFAULT_LENGTH_BUCKETS",
    "Embedder",
    "FillMask",
    "PseudoLogLikelihood",
    "bucket_for",
]

# Keyword arguments that the task constructors take (the rest goes to load_pretrained).
_ENGINE_KWARGS = frozenset(f.name for f in dataclasses.fields(EngineOptions))

logger = logging.getLogger(__name__)


def _shown(text: str, limit: int = 60) -> str:
    """``text`` as echoed in an error: its repr, cut to ``limit`` characters (with the
    full length) when longer, so a 25 KB line does not make a 25 KB message."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def _as_texts(inputs: Any) -> tuple[bool, list]:
    """(single, texts): a string, or a list (any iterable but a mapping) of them."""
    if isinstance(inputs, str):
        return True, [inputs]
    if isinstance(inputs, (Mapping, bytes, bytearray)) or not isinstance(inputs, Iterable):
        raise TypeError(f"inputs must be a string or a list of strings, got "
                        f"{type(inputs).__name__}")
    return False, list(inputs)


class _Pipeline:
    """Shared surface of the inference pipelines (fill-mask, PLL, embeddings): an
    :class:`Engine` over a model, and the tokenizer."""

    head = "masked_lm"

    def __init__(self, model: Any, params: Any, tokenizer: AlbertTokenizer,
                 options: EngineOptions | None = None, **engine_kwargs: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.engine = Engine(model, params, options, **engine_kwargs)
        self.max_length = self.engine.max_length
        self.length_buckets = self.engine.length_buckets
        self.batch_buckets = self.engine.batch_buckets
        self.batch_size = self.engine.batch_size

    @property
    def params(self) -> Any:
        return self.engine.params

    @property
    def num_traces(self) -> int:
        """How often the engine's steps were traced (= compiled): tests bound it."""
        return self.engine.num_traces

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any):
        """Loads model, parameters and tokenizer (see :func:`albert_jax.load_pretrained`).

        :class:`EngineOptions` fields (``batch_size``, ``length_buckets``, ``data``,
        ``tensor``, ``cache_dir``, ...) and ``options`` go to the engine, task options
        (``pooling``, ``word_l2r``) to the task, the rest (``dtype``, ...) to
        ``load_pretrained``.
        """
        from albert_jax.pretrained import load_pretrained

        own = {k: kwargs.pop(k) for k in list(kwargs)
               if k in _ENGINE_KWARGS or k in cls._task_kwargs or k == "options"}
        model, params, tokenizer = load_pretrained(name_or_path, head=cls.head, **kwargs)
        return cls(model, params, tokenizer, **own)

    _task_kwargs: frozenset[str] = frozenset()

    def row_lengths(self, prepared: Any) -> list[int]:
        """Lengths of the engine rows one prepared input becomes."""
        return [len(prepared)]

    def plan(self, prepared: Iterable[Any], **kwargs: Any):
        """Chooses the engine's step shapes for a known workload (every prepared input
        that will run); see :meth:`albert_jax.engine.Engine.plan`."""
        return self.engine.plan([n for p in prepared for n in self.row_lengths(p)], **kwargs)

    def encode(self, text: str, index: int | None = None) -> list[int]:
        """Token ids of ``text``; ValueError naming the input when empty or too long."""
        where = f"input {index} " if index is not None else "input "
        if not isinstance(text, str):
            raise TypeError(f"{where}must be a string, got {type(text).__name__}")
        ids = self.tokenizer.encode(text)
        if len(ids) <= 2:
            raise ValueError(f"{where}{_shown(text)} is empty")
        if len(ids) > self.max_length:
            raise ValueError(
                f"{where}{_shown(text)} is {len(ids)} tokens long; the model accepts at most "
                f"{self.max_length}"
            )
        return ids


@dataclasses.dataclass
class _Prepared:
    """One validated input: its ids (with [CLS]/[SEP]) and the mask position."""

    ids: list[int]
    mask_index: int


class FillMask(_Pipeline):
    """Ranks completions of the single ``[MASK]`` in each text.

    ``fm(text, top_k=5, targets=None)`` returns transformers' fill-mask format: a list of
    ``{"score", "token", "token_str", "sequence"}`` for a string, a list of such lists for a
    list of strings. ``score`` is the softmax over the whole vocabulary; with ``targets``
    the scores of those tokens (not renormalised), best first. Runs through the
    :class:`~albert_jax.engine.Engine` (step ``"probs"``: the vocabulary projection only
    at the mask).
    """

    def __init__(
        self,
        model: AlbertForMaskedLM,
        params: Any,
        tokenizer: AlbertTokenizer,
        options: EngineOptions | None = None,
        **engine_kwargs: Any,
    ) -> None:
        """``engine_kwargs``: :class:`EngineOptions` fields (``batch_size=32``,
        ``length_buckets``, ``data``/``fsdp``/``tensor``, ...)."""
        super().__init__(model, params, tokenizer, options, **engine_kwargs)

    # ------------------------------------------------------------------ host side
    def prepare(self, text: str, index: int | None = None) -> _Prepared:
        """Tokenises ``text``; ValueError naming the input unless it has exactly one mask."""
        where = f"input {index} " if index is not None else "input "
        if not isinstance(text, str):
            raise TypeError(f"{where}must be a string, got {type(text).__name__}")
        ids = self.tokenizer.encode(text)
        mask_id = self.tokenizer.mask_token_id
        count = ids.count(mask_id)
        if count != 1:
            what = "no" if count == 0 else str(count)
            raise ValueError(
                f"{where}{_shown(text)} has {what} {self.tokenizer.mask_token} tokens; "
                "exactly one is required"
            )
        if len(ids) > self.max_length:
            raise ValueError(
                f"{where}{_shown(text)} is {len(ids)} tokens long; the model accepts at most "
                f"{self.max_length}"
            )
        return _Prepared(ids=ids, mask_index=ids.index(mask_id))

    def target_ids(self, targets: str | Sequence[str]) -> np.ndarray:
        """Vocabulary ids of ``targets``, as transformers' pipeline resolves them.

        A target that is a vocabulary piece is used as is; otherwise its first piece after
        tokenisation (with a warning). Duplicates are dropped.
        """
        if isinstance(targets, str):
            targets = [targets]
        if isinstance(targets, (Mapping, bytes, bytearray)) or not isinstance(targets, Iterable):
            raise TypeError(f"targets must be a string or a list of strings, got "
                            f"{type(targets).__name__}")
        ids: list[int] = []
        for target in targets:
            tid, exact = self.resolve_target(target)
            if tid is None:
                logger.warning("target %r is empty after tokenisation: ignored", target)
                continue
            if not exact:
                logger.warning(
                    "target %r is not in the vocabulary: using %r",
                    target, self.tokenizer.convert_ids_to_tokens(tid),
                )
            ids.append(tid)
        if not ids:
            raise ValueError("at least one valid target must be given")
        return np.asarray(sorted(set(ids)), dtype=np.int64)

    def resolve_target(self, target: str) -> tuple[int | None, bool]:
        """(vocabulary id, whether ``target`` is that piece exactly) as :meth:`target_ids`
        resolves one target, without logging; (None, False) when it tokenises to nothing."""
        if not isinstance(target, str):
            raise TypeError(f"targets must be strings, got {type(target).__name__}")
        tid = self.tokenizer.convert_tokens_to_ids(target)
        if self.tokenizer.convert_ids_to_tokens(tid) == target:
            return tid, True
        pieces = self.tokenizer.encode(target, add_special_tokens=False)
        return (pieces[0], False) if pieces else (None, False)

    def row_lengths(self, prepared: _Prepared) -> list[int]:
        return [len(prepared.ids)]

    def probabilities(self, prepared: Sequence[_Prepared]) -> np.ndarray:
        """[N, V] probabilities at the mask of each prepared input, in input order."""
        rows = [Row(p.ids, position=p.mask_index) for p in prepared]
        return self.engine.run_rows("probs", rows)

    def stream_probabilities(self, prepared: Iterable[_Prepared]) -> Iterator[np.ndarray]:
        """[V] probabilities for each prepared input, streamed in input order."""
        groups = ([Row(p.ids, position=p.mask_index)] for p in prepared)
        for out in self.engine.stream("probs", groups):
            yield out[0]

    def stream_top_k(
        self, prepared: Iterable[_Prepared], top_k: int = 5,
        targets: np.ndarray | None = None, progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(scores [k], ids [k]) best first for each prepared input, in input order, as soon
        as it is ready; chosen on the device (over ``targets`` ids only when given), so
        only k scores per input come back to the host. ``progress(n)``: see
        :meth:`~albert_jax.engine.Engine.stream`."""
        groups = ([Row(p.ids, position=p.mask_index)] for p in prepared)
        for scores, ids in self.engine.stream("topk", groups, top_k=top_k,
                                              candidates=targets, progress=progress):
            yield scores[0], ids[0]

    def format(
        self, prepared: _Prepared, probs: np.ndarray, top_k: int, targets: np.ndarray | None
    ) -> list[dict]:
        """transformers' fill-mask records for one input's [V] probabilities."""
        candidates = np.arange(probs.shape[0]) if targets is None else targets
        scores = probs[candidates]
        k = min(top_k, len(candidates))
        best = np.argsort(-scores, kind="stable")[:k]
        return self.format_top_k(prepared, scores[best], candidates[best])

    def format_top_k(self, prepared: _Prepared, scores: np.ndarray,
                     ids: np.ndarray) -> list[dict]:
        """transformers' fill-mask records for one input's best (scores [k], ids [k])."""
        results = []
        for score, token in zip(scores, ids, strict=True):
            token = int(token)
            filled = list(prepared.ids)
            filled[prepared.mask_index] = token
            results.append({
                "score": float(score),
                "token": token,
                "token_str": self.tokenizer.decode([token]),
                "sequence": self.tokenizer.decode(filled, skip_special_tokens=True),
            })
        return results

    def __call__(
        self,
        inputs: str | Sequence[str],
        top_k: int = 5,
        targets: str | Sequence[str] | None = None,
    ) -> list[dict] | list[list[dict]]:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
            raise TypeError(f"top_k must be an integer, got {type(top_k).__name__}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        single, texts = _as_texts(inputs)
        prepared = [self.prepare(t, None if single else i) for i, t in enumerate(texts)]
        target_ids = None if targets is None else self.target_ids(targets)
        best = self.stream_top_k(prepared, top_k, target_ids)
        results = [self.format_top_k(p, *next(best)) for p in prepared]
        return results[0] if single else results


@dataclasses.dataclass
class PLLResult:
    """A sentence's pseudo-log-likelihood: the sum of the log-probabilities of its tokens,
    each predicted with itself masked (and, for word-l2r, the rest of its word to the
    right), and ``pseudo_perplexity = exp(-total / num_tokens)``."""

    total_logprob: float
    pseudo_perplexity: float
    tokens: list[str]
    token_logprobs: list[float]

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def to_dict(self) -> dict:
        return {"total_logprob": self.total_logprob,
                "pseudo_perplexity": self.pseudo_perplexity,
                "num_tokens": self.num_tokens, "tokens": self.tokens,
                "token_logprobs": self.token_logprobs}


class PseudoLogLikelihood(_Pipeline):
    """Pseudo-log-likelihood scores (Salazar et al. 2020, "Masked Language Model Scoring").

    Every non-special token of a sentence is masked in turn; all the masked copies of all
    sentences (of one engine window) are sorted by length and batched together. With
    ``word_l2r=True`` (PLL-word-l2r, Kauf & Ivanova 2023) the pieces of the same word to
    the right of the scored piece are masked as well (a word starts at a piece beginning
    with "▁"). ``pll(text)`` -> :class:`PLLResult`; ``pll(list)`` -> list of them.
    """

    _task_kwargs = frozenset({"word_l2r"})

    def __init__(self, model: AlbertForMaskedLM, params: Any, tokenizer: AlbertTokenizer,
                 options: EngineOptions | None = None, *, word_l2r: bool = False,
                 **engine_kwargs: Any) -> None:
        super().__init__(model, params, tokenizer, options, **engine_kwargs)
        self.word_l2r = word_l2r
        self._special = {tokenizer.cls_token_id, tokenizer.sep_token_id,
                         tokenizer.pad_token_id, tokenizer.mask_token_id}

    def scored_positions(self, ids: Sequence[int]) -> list[int]:
        return [i for i, t in enumerate(ids) if t not in self._special]

    def row_lengths(self, prepared: Sequence[int]) -> list[int]:
        return [len(prepared)] * len(self.scored_positions(prepared))

    def rows(self, ids: Sequence[int]) -> list[Row]:
        """The masked copies of one sentence: one row per scored token."""
        mask_id = self.tokenizer.mask_token_id
        positions = self.scored_positions(ids)
        pieces = self.tokenizer.convert_ids_to_tokens(list(ids))
        rows = []
        for p in positions:
            masked = list(ids)
            masked[p] = mask_id
            if self.word_l2r:
                q = p + 1
                while (q < len(ids) and ids[q] not in self._special
                       and not pieces[q].startswith("▁")):
                    masked[q] = mask_id
                    q += 1
            rows.append(Row(masked, position=p, target=ids[p]))
        return rows

    def prepare(self, text: str, index: int | None = None) -> list[int]:
        ids = self.encode(text, index)
        if not self.scored_positions(ids):
            where = f"input {index} " if index is not None else "input "
            raise ValueError(f"{where}{_shown(text)} has no token to score")
        return ids

    def result(self, ids: Sequence[int], logprobs: np.ndarray) -> PLLResult:
        positions = self.scored_positions(ids)
        values = [float(x) for x in np.asarray(logprobs, dtype=np.float64)]
        total = float(np.sum(values))
        return PLLResult(
            total_logprob=total,
            pseudo_perplexity=float(np.exp(-total / len(values))),
            tokens=self.tokenizer.convert_ids_to_tokens([ids[p] for p in positions]),
            token_logprobs=values,
        )

    def stream(self, prepared: Iterable[Sequence[int]],
               progress: Callable[[int], None] | None = None) -> Iterator[PLLResult]:
        """A :class:`PLLResult` per prepared id list, in input order (``progress``: see
        :meth:`~albert_jax.engine.Engine.stream`)."""
        kept: collections.deque[Sequence[int]] = collections.deque()

        def groups():
            for ids in prepared:
                kept.append(ids)
                yield self.rows(ids)

        for out in self.engine.stream("logprob", groups(), progress=progress):
            yield self.result(kept.popleft(), out)

    def __call__(self, inputs: str | Sequence[str]) -> PLLResult | list[PLLResult]:
        single, texts = _as_texts(inputs)
        prepared = [self.prepare(t, None if single else i) for i, t in enumerate(texts)]
        results = list(self.stream(prepared))
        return results[0] if single else results


POOLINGS = ("pooled", "cls", "mean")


class Embedder(_Pipeline):
    """Sentence embeddings: ``pooling="pooled"`` (the pooler output, tanh(W h_CLS + b)),
    ``"cls"`` (the [CLS] hidden state) or ``"mean"`` (mean of the last hidden states over
    the attended tokens, [CLS] and [SEP] included). ``emb(texts)`` -> [N, H] float32.
    Loads the ``base`` head: a checkpoint without pooler weights (transformers'
    ``AlbertForMaskedLM`` saves) gets a random pooler, with a warning, so ``"pooled"``
    needs a checkpoint that has one."""

    head = "base"
    _task_kwargs = frozenset({"pooling"})

    def __init__(self, model: Any, params: Any, tokenizer: AlbertTokenizer,
                 options: EngineOptions | None = None, *, pooling: str = "mean",
                 **engine_kwargs: Any) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r} (choose from {', '.join(POOLINGS)})")
        super().__init__(model, params, tokenizer, options, **engine_kwargs)
        self.pooling = pooling

    def prepare(self, text: str, index: int | None = None) -> list[int]:
        return self.encode(text, index)

    def stream(self, prepared: Iterable[Sequence[int]],
               progress: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
        """A [H] embedding per prepared id list, in input order."""
        for out in self.engine.stream(self.pooling, ([Row(ids)] for ids in prepared),
                                      progress=progress):
            yield out[0]

    def __call__(self, inputs: str | Sequence[str]) -> np.ndarray:
        single, texts = _as_texts(inputs)
        prepared = [self.prepare(t, None if single else i) for i, t in enumerate(texts)]
        out = list(self.stream(prepared))
        if single:
            return out[0]
        return np.stack(out) if out else np.zeros((0, self.model.config.hidden_size),
                                                    np.float32)
