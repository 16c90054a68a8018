"""ALBERT pretraining data: SOP segment pairs and n-gram masking, on the fly and resumable.

The logic follows google-research/albert ``create_pretraining_data.py`` (segments of
consecutive sentences of one document, ``short_seq_prob``, random split point, SOP swap with
probability 0.5 and label 1 = swapped, ``truncate_seq_pair``, whole-word n-gram masking with
P(n) proportional to 1/n, 80/10/10) with its bugs fixed:

* all randomness comes from numpy ``Generator`` s derived from one seed (the original draws
  the n-gram length from the unseeded global ``np.random``);
* random replacement tokens are never special ids 0-4 (the original samples the whole vocab);
* n-grams never run past the last word (the original's truncated slices made "3-grams" near
  the end of a sequence that were really 1- or 2-grams, skewing P(n));
* a word never continues across ``[SEP]`` (the original glued a non-initial piece starting
  segment B onto the last word of segment A);
* the number to predict is 15% of the maskable tokens, not of the length with
  ``[CLS]``/``[SEP]``; special ids (``<pad> <unk> [CLS] [SEP] [MASK]``) are never masked;
* a chunk of one sentence (a sentence longer than the target, or the last sentence of a
  document) is split at a random token into A and B. The original then took B from a *random
  document* with label 1, which mixes NSP examples into SOP;
* the target length is redrawn after every example (the original draws it once per document,
  so with whole books as documents 10% of *books* would be all short sequences).

Word starts are ALBERT's ``_is_start_piece_sp``: a piece starting with "▁" or "<", or a
single punctuation character piece.

The stream (:class:`PretrainingDataset`) is a pure function of ``(seed, epoch, position)``:
each epoch, every document of this process' shard is cut into segment pairs with an RNG
derived from ``(seed, epoch, document index)``, the pairs are shuffled with an RNG derived from
``(seed, epoch, process)``, and the pair at position ``k`` is masked with an RNG derived from
``(seed, epoch, process, k)``. So ``{"epoch", "position"}`` is the whole state.
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
NUM_SPECIAL_IDS = 5  # ids 0-4 are special in ALBERT's spiece.model

# RNG stream tags, so the segmenting, shuffling and masking draws never share a stream.
_SEGMENT_STREAM, _SHUFFLE_STREAM, _MASK_STREAM = 0, 1, 2

_PUNCTUATION_PIECES = frozenset(string.punctuation)

Document = list[np.ndarray]  # sentences, each [n_i] int32 piece ids
Example = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- documents
def _as_text(value: Any) -> str:
    """bytes (real TFDS sources) or str (``tfds.testing.mock_data``) -> str."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def document_sentences(record: Any) -> list[str]:
    """Sentences of one record: a ``{"sentences": [...]}`` dict or a sequence of strings."""
    sentences = record["sentences"] if isinstance(record, dict) else record
    return [_as_text(s) for s in sentences]


def tokenize_document(sentences: Sequence[str], tokenizer: Any) -> Document:
    """Sentences -> list of int32 id arrays (no special tokens); empty sentences dropped."""
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        return []
    try:  # one batched sentencepiece call per document (AlbertTokenizer.__call__)
        ids = tokenizer(list(sentences), add_special_tokens=False)["input_ids"]
    except TypeError:  # a tokenizer with only ``encode``
        ids = [tokenizer.encode(s, add_special_tokens=False) for s in sentences]
    return [np.asarray(x, dtype=np.int32) for x in ids if len(x)]


def word_start_table(tokenizer: Any) -> np.ndarray:
    """[V] bool: does piece id ``i`` start a word (ALBERT's ``_is_start_piece_sp``)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(tokenizer.vocab_size)))
    return np.array(
        [p.startswith(("▁", "<")) or p in _PUNCTUATION_PIECES for p in pieces], dtype=bool
    )


# ----------------------------------------------------------------------------- segments
def truncate_seq_pair(
    tokens_a: np.ndarray, tokens_b: np.ndarray, max_num_tokens: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's ``truncate_seq_pair``: drop one token at a time from the longer segment, from the
    front or the back with probability 1/2 each, until ``len(a) + len(b) <= max_num_tokens``."""
    excess = len(tokens_a) + len(tokens_b) - max_num_tokens
    if excess <= 0:
        return tokens_a, tokens_b
    front = rng.random(excess) < 0.5  # one coin per deleted token, drawn at once
    a_lo, a_hi, b_lo, b_hi = 0, len(tokens_a), 0, len(tokens_b)
    for f in front.tolist():
        if a_hi - a_lo > b_hi - b_lo:
            if f:
                a_lo += 1
            else:
                a_hi -= 1
        elif f:
            b_lo += 1
        else:
            b_hi -= 1
    return tokens_a[a_lo:a_hi], tokens_b[b_lo:b_hi]


def create_segment_pairs(
    document: Document,
    max_seq_length: int,
    short_seq_prob: float,
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """One document -> SOP pairs ``(tokens_a [n_a], tokens_b [n_b], sop_label)``.

    Consecutive sentences are gathered until they reach the target length
    (``max_seq_length - 3``, or with probability ``short_seq_prob`` a length drawn uniformly
    from ``[2, max_seq_length - 3]``); the chunk is split at a random sentence boundary into A
    and B (a one-sentence chunk at a random token), A and B are swapped with probability 0.5
    (label 1) and truncated to ``max_seq_length - 3`` tokens in total. Both are non-empty.
    """
    max_num_tokens = max_seq_length - 3

    def draw_target() -> int:
        if rng.random() < short_seq_prob:
            return int(rng.integers(2, max_num_tokens + 1))
        return max_num_tokens

    pairs: list[tuple[np.ndarray, np.ndarray, int]] = []
    target = draw_target()
    chunk: list[np.ndarray] = []
    length = 0
    for i, sentence in enumerate(document):
        chunk.append(sentence)
        length += len(sentence)
        if i < len(document) - 1 and length < target:
            continue
        full, chunk, length = chunk, [], 0
        if len(full) >= 2:
            a_end = int(rng.integers(1, len(full)))  # in [1, len(full) - 1]
            a, b = np.concatenate(full[:a_end]), np.concatenate(full[a_end:])
        elif len(full[0]) >= 2:
            cut = int(rng.integers(1, len(full[0])))
            a, b = full[0][:cut], full[0][cut:]
        else:  # a lone one-token sentence makes no pair
            target = draw_target()
            continue
        label = 0
        if rng.random() < 0.5:
            a, b, label = b, a, 1
        a, b = truncate_seq_pair(a, b, max_num_tokens, rng)
        pairs.append((a, b, label))
        target = draw_target()
    return pairs


# ----------------------------------------------------------------------------- masking
class MaskedLm(NamedTuple):
    """Result of :func:`mask_tokens` for a sequence of length n with k predictions."""

    input_ids: np.ndarray  # [n] int32, the masked input
    positions: np.ndarray  # [k] int32, sorted
    labels: np.ndarray  # [k] int32, the original ids at ``positions``
    ngram_lengths: list[int]  # number of words of each masked n-gram (for statistics)


def _ngram_cdfs(max_ngram: int) -> list[np.ndarray]:
    """cdfs[m - 1]: cumulative P(n) ~ 1/n over n = 1..m (m = n-grams that fit)."""
    cdfs = []
    for m in range(1, max_ngram + 1):
        p = 1.0 / np.arange(1, m + 1)
        cdfs.append(np.cumsum(p / p.sum()))
    return cdfs


def mask_tokens(
    tokens: np.ndarray,
    rng: np.random.Generator,
    is_word_start: np.ndarray,
    vocab_size: int,
    masked_lm_prob: float = 0.15,
    max_predictions_per_seq: int = 20,
    max_ngram: int = 3,
) -> MaskedLm:
    """Whole-word n-gram masking of ``tokens`` [n] (``[CLS] A [SEP] B [SEP]``, unpadded).

    ``min(max_predictions_per_seq, max(1, round(masked_lm_prob * maskable)))`` tokens are
    predicted, ``maskable`` = the non-special tokens. Words (a start piece and its following
    non-start pieces, never across a special token) are visited in random order; at each, an
    n-gram of n <= ``max_ngram`` words with P(n) ~ 1/n is drawn (n limited to the words left),
    shortened while it would exceed the budget, and skipped if it overlaps a masked one. Each
    masked token becomes ``[MASK]`` (80%), stays (10%) or becomes a random non-special id (10%).
    """
    words: list[list[int]] = []
    prev_special = True
    for i, t in enumerate(tokens.tolist()):
        if t < NUM_SPECIAL_IDS:
            prev_special = True
            continue
        if prev_special or is_word_start[t]:
            words.append([i])
        else:
            words[-1].append(i)
        prev_special = False
    n_maskable = sum(len(w) for w in words)
    output = tokens.copy()
    if n_maskable == 0:
        empty = np.zeros([0], np.int32)
        return MaskedLm(output, empty, empty, [])
    num_to_predict = min(max_predictions_per_seq, max(1, round(n_maskable * masked_lm_prob)))
    cdfs = _ngram_cdfs(max_ngram)

    covered = np.zeros(len(tokens), dtype=bool)
    n_masked = 0
    ngram_lengths: list[int] = []
    for start in rng.permutation(len(words)).tolist():
        if n_masked >= num_to_predict:
            break
        fit = min(max_ngram, len(words) - start)
        n = int(np.searchsorted(cdfs[fit - 1], rng.random(), side="right")) + 1
        n = min(n, fit)  # guards the cdf's last value rounding below 1
        # Shorten while over budget (as the original); give up if even one word is too long.
        while n > 0 and n_masked + sum(len(w) for w in words[start : start + n]) > num_to_predict:
            n -= 1
        if n == 0:
            continue
        index_set = [i for w in words[start : start + n] for i in w]
        if covered[index_set].any():
            continue  # overlaps a masked n-gram (the original's check, made effective)
        covered[index_set] = True
        n_masked += len(index_set)
        ngram_lengths.append(n)
        for i in index_set:
            if rng.random() < 0.8:
                output[i] = MASK_ID
            elif rng.random() < 0.5:
                pass  # keep the original token
            else:
                output[i] = rng.integers(NUM_SPECIAL_IDS, vocab_size)
    positions = np.flatnonzero(covered).astype(np.int32)
    return MaskedLm(output, positions, tokens[positions].astype(np.int32), ngram_lengths)


def make_example(
    tokens_a: np.ndarray,
    tokens_b: np.ndarray,
    sop_label: int,
    rng: np.random.Generator,
    is_word_start: np.ndarray,
    vocab_size: int,
    max_seq_length: int,
    max_predictions_per_seq: int,
    masked_lm_prob: float = 0.15,
    max_ngram: int = 3,
) -> Example:
    """One fixed-shape example from a segment pair (L = max_seq_length, P = max predictions).

    Returns:
        ``input_ids`` [L] int32 (``[CLS] A [SEP] B [SEP]``, masked, padded with 0),
        ``attention_mask`` [L] int32, ``token_type_ids`` [L] int32 (0 for ``[CLS] A [SEP]``,
        1 for ``B [SEP]``, 0 on padding), ``masked_positions`` [P] int32 (padded with 0),
        ``masked_ids`` [P] int32 (original ids; 0 on padding), ``masked_weights`` [P] float32
        (1 real, 0 padding), ``sop_label`` [] int32 (1 = segments swapped).
    """
    n_a, n_b = len(tokens_a), len(tokens_b)
    n = n_a + n_b + 3
    if n > max_seq_length:
        raise ValueError(f"segments of {n_a} + {n_b} tokens do not fit {max_seq_length}")
    tokens = np.empty([n], np.int32)
    tokens[0], tokens[n_a + 1], tokens[n - 1] = CLS_ID, SEP_ID, SEP_ID
    tokens[1 : n_a + 1] = tokens_a
    tokens[n_a + 2 : n - 1] = tokens_b
    masked = mask_tokens(
        tokens, rng, is_word_start, vocab_size, masked_lm_prob, max_predictions_per_seq, max_ngram
    )
    k = len(masked.positions)
    ex = {
        "input_ids": np.zeros([max_seq_length], np.int32),
        "attention_mask": np.zeros([max_seq_length], np.int32),
        "token_type_ids": np.zeros([max_seq_length], np.int32),
        "masked_positions": np.zeros([max_predictions_per_seq], np.int32),
        "masked_ids": np.zeros([max_predictions_per_seq], np.int32),
        "masked_weights": np.zeros([max_predictions_per_seq], np.float32),
        "sop_label": np.asarray(sop_label, np.int32),
    }
    ex["input_ids"][:n] = masked.input_ids
    ex["attention_mask"][:n] = 1
    ex["token_type_ids"][n_a + 2 : n] = 1
    ex["masked_positions"][:k] = masked.positions
    ex["masked_ids"][:k] = masked.labels
    ex["masked_weights"][:k] = 1.0
    return ex


def collate(examples: Sequence[Example]) -> Example:
    """Stack B examples into a batch: every field gets a leading [B] axis."""
    return {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}


# ----------------------------------------------------------------------------- stream
class PretrainingDataset:
    """Endless, deterministic, resumable stream of ALBERT pretraining batches.

    Args:
        source: random-access documents: a TFDS ``as_data_source()`` split of
            :class:`albert_jax.corpus_builder.LocalTextCorpus` (records
            ``{"sentences": [...]}``), or any sequence of such dicts / lists of strings.
        tokenizer: an :class:`albert_jax.tokenizer.AlbertTokenizer` (or anything with
            ``__call__``/``encode``, ``convert_ids_to_tokens`` and ``vocab_size``).
        max_seq_length: L. max_predictions_per_seq: P. batch_size: B (per process).
        seed: the only source of randomness.
        process_index, process_count: this process reads documents ``i`` with
            ``i % process_count == process_index`` (and masks with its own RNG streams).
        tokenized_documents: optional pre-tokenised documents of the *whole* source (as from
            :func:`tokenize_document`, aligned with ``source``) to skip tokenising again.

    Iterating yields dicts of numpy arrays with shapes ``[B, L]`` (``input_ids``,
    ``attention_mask``, ``token_type_ids``), ``[B, P]`` (``masked_positions``,
    ``masked_ids``, ``masked_weights``) and ``[B]`` (``sop_label``). Epochs roll over inside
    batches. ``get_state()`` before a batch and ``set_state`` on a fresh dataset with the
    same arguments reproduce the stream from that batch on.
    """

    def __init__(
        self,
        source: Sequence[Any],
        tokenizer: Any,
        max_seq_length: int,
        max_predictions_per_seq: int,
        batch_size: int,
        seed: int,
        short_seq_prob: float = 0.1,
        masked_lm_prob: float = 0.15,
        max_ngram: int = 3,
        process_index: int = 0,
        process_count: int = 1,
        tokenized_documents: Sequence[Document] | None = None,
    ) -> None:
        if max_seq_length < 5:
            raise ValueError("max_seq_length must be >= 5 ([CLS] a [SEP] b [SEP])")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        self.max_seq_length = max_seq_length
        self.max_predictions_per_seq = max_predictions_per_seq
        self.batch_size = batch_size
        self.seed = seed
        self.short_seq_prob = short_seq_prob
        self.masked_lm_prob = masked_lm_prob
        self.max_ngram = max_ngram
        self.process_index = process_index
        self.process_count = process_count
        self.vocab_size = int(tokenizer.vocab_size)
        self.is_word_start = word_start_table(tokenizer)

        # This process' share; tokenised once and kept in memory (fine for small corpora).
        self.document_indices = list(range(process_index, len(source), process_count))
        if tokenized_documents is not None:
            self.documents = [tokenized_documents[i] for i in self.document_indices]
        else:
            self.documents = [
                tokenize_document(document_sentences(source[i]), tokenizer)
                for i in self.document_indices
            ]
        if not any(self.documents):
            raise ValueError(f"process {process_index} of {process_count} has no documents")
        self._epoch = 0
        self._position = 0
        self._plan_epoch: int | None = None
        self._plan: list[tuple[np.ndarray, np.ndarray, int]] = []
        self._order = np.zeros([0], np.int64)

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, int]:
        """``{"epoch", "position"}``: the next example is number ``position`` of ``epoch``."""
        return {"epoch": self._epoch, "position": self._position}

    def set_state(self, state: dict[str, int]) -> None:
        """Continue from a state returned by :meth:`get_state` (of an equally built stream)."""
        self._epoch, self._position = int(state["epoch"]), int(state["position"])

    # ------------------------------------------------------------------ epochs
    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._epoch, *key])

    def _ensure_plan(self) -> None:
        """Segment pairs of the current epoch, and their shuffled order."""
        if self._plan_epoch == self._epoch:
            return
        plan: list[tuple[np.ndarray, np.ndarray, int]] = []
        for doc_index, doc in zip(self.document_indices, self.documents, strict=True):
            # Keyed by the global document index: independent of process_count.
            rng = self._rng(_SEGMENT_STREAM, doc_index)
            plan.extend(create_segment_pairs(doc, self.max_seq_length, self.short_seq_prob, rng))
        if not plan:
            raise ValueError("the documents give no segment pairs")
        shuffle = self._rng(_SHUFFLE_STREAM, self.process_index, self.process_count)
        self._plan, self._order = plan, shuffle.permutation(len(plan))
        self._plan_epoch = self._epoch

    def examples_in_epoch(self) -> int:
        """Number of examples in the current epoch (it varies a little between epochs)."""
        self._ensure_plan()
        return len(self._plan)

    @property
    def epoch(self) -> int:
        return self._epoch

    def next_example(self) -> Example:
        """The next single example (see :func:`make_example` for the fields)."""
        self._ensure_plan()
        if self._position >= len(self._plan):
            self._epoch, self._position = self._epoch + 1, 0
            self._ensure_plan()
        a, b, label = self._plan[self._order[self._position]]
        rng = self._rng(_MASK_STREAM, self.process_index, self.process_count, self._position)
        self._position += 1
        return make_example(
            a,
            b,
            label,
            rng,
            self.is_word_start,
            self.vocab_size,
            self.max_seq_length,
            self.max_predictions_per_seq,
            self.masked_lm_prob,
            self.max_ngram,
        )

    def __iter__(self) -> Iterator[Example]:
        return self

    def __next__(self) -> Example:
        """The next batch: fields of shape [B, ...] (see the class docstring)."""
        return collate([self.next_example() for _ in range(self.batch_size)])
