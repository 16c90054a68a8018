"""Fill-mask inference: bucketed, jit-compiled, MLM head only at the mask positions.

Inputs are sorted by length and packed into batches whose shapes come from a small fixed
set (``length_buckets`` x ``batch_buckets``), so a run compiles at most once per shape it
uses, whatever the mix of input lengths. The vocabulary projection (H -> E -> V) runs only
at the ``[MASK]`` position of each row: [B, 1, V] instead of [B, S, V].
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from albert_jax.model import AlbertForMaskedLM
from albert_jax.tokenizer import AlbertTokenizer

logger = logging.getLogger(__name__)

DEFAULT_LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n (buckets sorted ascending); ValueError if none fits."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


@dataclasses.dataclass
class _Prepared:
    """One validated input: its ids (with [CLS]/[SEP]) and the mask position."""

    ids: list[int]
    mask_index: int


class FillMask:
    """Ranks completions of the single ``[MASK]`` in each text.

    ``fm(text, top_k=5, targets=None)`` returns transformers' fill-mask format: a list of
    ``{"score", "token", "token_str", "sequence"}`` for a string, a list of such lists for a
    list of strings. ``score`` is the softmax over the whole vocabulary; with ``targets``
    the scores of those tokens (not renormalised), best first.
    """

    def __init__(
        self,
        model: AlbertForMaskedLM,
        params: Any,
        tokenizer: AlbertTokenizer,
        *,
        batch_size: int = 32,
        length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
    ) -> None:
        self.model = model
        self.params = params
        self.tokenizer = tokenizer
        self.max_length = model.config.max_position_embeddings
        self.length_buckets = tuple(sorted({min(b, self.max_length) for b in length_buckets}))
        if self.length_buckets[-1] < self.max_length:
            self.length_buckets += (self.max_length,)
        smaller = (b for b in DEFAULT_BATCH_BUCKETS if b < batch_size)
        self.batch_buckets = (*smaller, batch_size)
        self.batch_size = batch_size
        self.num_traces = 0  # How often the step was traced (= compiled): tests bound it.
        self._step = jax.jit(self._probs_at_mask)

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> FillMask:
        """Loads model, parameters and tokenizer (see :func:`albert_jax.load_pretrained`).

        Keyword arguments ``batch_size`` and ``length_buckets`` go to the constructor, the
        rest (``dtype``, ...) to ``load_pretrained``.
        """
        from albert_jax.pretrained import load_pretrained

        own = {k: kwargs.pop(k) for k in ("batch_size", "length_buckets") if k in kwargs}
        model, params, tokenizer = load_pretrained(name_or_path, head="masked_lm", **kwargs)
        return cls(model, params, tokenizer, **own)

    # ------------------------------------------------------------------ device step
    def _probs_at_mask(
        self, params: Any, input_ids: jax.Array, attention_mask: jax.Array, mask_index: jax.Array
    ) -> jax.Array:
        """[B, S] ids, [B, S] mask, [B] mask positions -> [B, V] probabilities."""
        self.num_traces += 1
        out = self.model.apply(
            params, input_ids, attention_mask, masked_positions=mask_index[:, None]
        )
        return jax.nn.softmax(out.logits[:, 0, :].astype(jnp.float32), axis=-1)

    # ------------------------------------------------------------------ host side
    def prepare(self, text: str, index: int | None = None) -> _Prepared:
        """Tokenises ``text``; ValueError naming the input unless it has exactly one mask."""
        where = f"input {index} " if index is not None else "input "
        if not isinstance(text, str):
            raise ValueError(f"{where}must be a string, got {type(text).__name__}")
        ids = self.tokenizer.encode(text)
        mask_id = self.tokenizer.mask_token_id
        count = ids.count(mask_id)
        if count != 1:
            what = "no" if count == 0 else str(count)
            raise ValueError(
                f"{where}{text!r} has {what} {self.tokenizer.mask_token} tokens; "
                "exactly one is required"
            )
        if len(ids) > self.max_length:
            raise ValueError(
                f"{where}{text!r} is {len(ids)} tokens long; the model accepts at most "
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
        ids: list[int] = []
        for target in targets:
            tid = self.tokenizer.convert_tokens_to_ids(target)
            if self.tokenizer.convert_ids_to_tokens(tid) != target:
                pieces = self.tokenizer.encode(target, add_special_tokens=False)
                if not pieces:
                    logger.warning("target %r is empty after tokenisation: ignored", target)
                    continue
                tid = pieces[0]
                logger.warning(
                    "target %r is not in the vocabulary: using %r",
                    target, self.tokenizer.convert_ids_to_tokens(tid),
                )
            ids.append(tid)
        if not ids:
            raise ValueError("at least one valid target must be given")
        return np.asarray(sorted(set(ids)), dtype=np.int64)

    def probabilities(self, prepared: Sequence[_Prepared]) -> np.ndarray:
        """[N, V] probabilities at the mask of each prepared input, in input order."""
        order = sorted(range(len(prepared)), key=lambda i: len(prepared[i].ids))
        out = np.empty((len(prepared), self.model.config.vocab_size), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            rows = bucket_for(len(chunk), self.batch_buckets)
            length = bucket_for(max(len(prepared[i].ids) for i in chunk), self.length_buckets)
            ids = np.zeros((rows, length), dtype=np.int32)  # pad id 0; padded rows masked out
            mask = np.zeros((rows, length), dtype=np.int32)
            mask_index = np.zeros((rows,), dtype=np.int32)
            for r, i in enumerate(chunk):
                n = len(prepared[i].ids)
                ids[r, :n] = prepared[i].ids
                mask[r, :n] = 1
                mask_index[r] = prepared[i].mask_index
            mask[len(chunk):, 0] = 1  # Dummy rows attend to one token: no all-masked softmax.
            probs = np.asarray(self._step(self.params, ids, mask, mask_index))
            out[chunk] = probs[: len(chunk)]
        return out

    def format(
        self, prepared: _Prepared, probs: np.ndarray, top_k: int, targets: np.ndarray | None
    ) -> list[dict]:
        """transformers' fill-mask records for one input's [V] probabilities."""
        candidates = np.arange(probs.shape[0]) if targets is None else targets
        scores = probs[candidates]
        k = min(top_k, len(candidates))
        best = np.argsort(-scores, kind="stable")[:k]
        results = []
        for j in best:
            token = int(candidates[j])
            ids = list(prepared.ids)
            ids[prepared.mask_index] = token
            results.append({
                "score": float(scores[j]),
                "token": token,
                "token_str": self.tokenizer.decode([token]),
                "sequence": self.tokenizer.decode(ids, skip_special_tokens=True),
            })
        return results

    def __call__(
        self,
        inputs: str | Sequence[str],
        top_k: int = 5,
        targets: str | Sequence[str] | None = None,
    ) -> list[dict] | list[list[dict]]:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        prepared = [self.prepare(t, None if single else i) for i, t in enumerate(texts)]
        target_ids = None if targets is None else self.target_ids(targets)
        probs = self.probabilities(prepared) if prepared else None
        results = [self.format(p, probs[i], top_k, target_ids) for i, p in enumerate(prepared)]
        return results[0] if single else results

