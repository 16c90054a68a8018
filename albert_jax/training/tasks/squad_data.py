"""Extractive question answering (SQuAD v1.1 / v2.0): reading, features, decoding. numpy only.

Pipeline::

    examples = read_squad("dev-v1.1.json")            # list[SquadExample]
    features = make_features(examples, tokenizer, is_training=False)   # list[SquadFeature]
    batch = stack_features(features)                  # dict of numpy arrays, see below
    out = model(input_ids=..., attention_mask=..., token_type_ids=...)  # start/end [N, L]
    predictions = decode(features, examples, start_logits, end_logits)  # {qid: answer text}

**Reading.** :func:`read_squad` takes a SQuAD JSON file (v1.1 or v2.0) or a ``.zip`` holding
exactly one ``.json``. Every answer is checked against its context (``context[start:start +
len(text)] == text``). Problems raise :class:`SquadFormatError` (a ``ValueError``) with a
one-line message naming the file and the question id or article / paragraph index.

**Context tokens and character offsets.** :func:`tokenize_with_offsets` splits the context on
whitespace into words and tokenizes each word on its own (the sentencepiece model never joins
pieces across whitespace, so this equals tokenizing the whole context except in rare corner
cases). Every piece gets a half-open char span ``[start, end)`` of the ORIGINAL context:

* The word is normalised one original character at a time the way the tokenizer normalises
  text (lowercase, NFKD, drop combining marks, two backquotes / two single quotes -> one double
  quote), remembering which original characters produced each normalised character.
* The pieces' text (the "▁" word-start mark removed) is matched left to right, as a
  subsequence, against that normalised word; characters sentencepiece itself drops (zero-width
  spaces, byte-order marks) are skipped. A piece spans from the first to the last original
  character behind its text, so "Café" -> "▁cafe" spans all 4 original characters (a
  combining mark written as its own character joins the character before it).
* If the subsequence match fails (text the normaliser rewrites in some other way), the pieces
  get spans proportional to their share of the normalised text, over the whole word.
* A bare "▁" piece (sentencepiece emits one before some pieces, e.g. "▁" "(") has an empty
  span at the start of the next piece's text; it is never a gold start or end.

**Features.** One feature per window of the context: ``[CLS] question [SEP] window [SEP]``
padded with ``<pad>`` to ``max_length``. The question is cut to ``max_query_length`` pieces;
a window holds at most ``max_length - len(question) - 3`` context pieces and successive windows
start ``doc_stride`` pieces apart (as in BERT's and google-research/albert's ``run_squad``).
Per feature (``L = max_length``):

* ``input_ids``, ``attention_mask``, ``token_type_ids`` : int32 [L] (type 0 over
  ``[CLS] question [SEP]``, 1 over ``window [SEP]``, 0 over padding).
* ``offsets`` : int32 [L, 2], the char span of each context piece in the example's context,
  ``-1`` for [CLS], question, [SEP] and padding.
* ``token_is_max_context`` : bool [L], BERT's rule: a context piece in several windows
  counts only in the window where ``min(left context, right context) + 0.01 * window length``
  is largest (the first such window on ties).
* ``start_position``, ``end_position`` : int, the gold span (first answer) as inclusive token
  indices in the feature, or 0 / 0 (pointing at [CLS]) when the question is impossible, the
  answer is not wholly inside the window, or ``is_training`` is False. The answer's chars
  ``[a, b)`` map to the first piece whose span ends after ``a`` and the last piece whose span
  starts before ``b``.

:func:`stack_features` turns a feature list into model-ready arrays: ``input_ids``,
``attention_mask``, ``token_type_ids`` [N, L] and ``start_positions``, ``end_positions`` [N].

**Decoding.** :func:`decode` takes ``start_logits`` / ``end_logits`` [N, L] in feature order.
For each example, over all its features, it takes the ``n_best_size`` best start tokens among
context tokens with max context and the ``n_best_size`` best end tokens among context tokens;
a pair is a candidate when ``end >= start``, ``end - start + 1 <= max_answer_length`` and the
char span is not empty; its score is ``start_logit + end_logit`` and its text is
``context[offsets[start, 0]:offsets[end, 1]].strip()`` (so original casing and accents come
back). With ``version_2=True`` the null score is the minimum over the example's features of
``start_logits[0] + end_logits[0]``, and the prediction is "" when ``null_score -
best_candidate_score > null_score_diff_threshold`` (or when there is no candidate).
:func:`decode_nbest` also returns, per question, the n-best list (distinct texts, best first,
``probability`` a softmax over the listed scores; with v2 the null answer "" is listed too).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

_WORD_RE = re.compile(r"\S+")
_UNDERLINE = "▁"


class SquadFormatError(ValueError):
    """A SQuAD file that cannot be read; the message names the file and the problem."""


class _Tokenizer(Protocol):
    cls_token_id: int
    sep_token_id: int
    pad_token_id: int

    def tokenize(self, text: str) -> list[str]: ...

    def convert_tokens_to_ids(self, tokens: Any) -> Any: ...


@dataclass(frozen=True)
class SquadExample:
    """One question. ``answers``: (text, char start in ``context``) pairs; () if impossible."""

    qid: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]
    is_impossible: bool = False


@dataclass(frozen=True, eq=False)
class SquadFeature:
    """One window of one example; arrays have length ``L = max_length`` (see module doc)."""

    example_index: int
    window_index: int
    input_ids: np.ndarray  # int32 [L]
    attention_mask: np.ndarray  # int32 [L]
    token_type_ids: np.ndarray  # int32 [L]
    offsets: np.ndarray  # int32 [L, 2]; -1 for non-context tokens
    token_is_max_context: np.ndarray  # bool [L]
    start_position: int = 0
    end_position: int = 0


# ---------------------------------------------------------------------------- reading
def _bad(path: str, what: str) -> SquadFormatError:
    return SquadFormatError(f"{path}: {what}")


def _load_json(path: str) -> Any:
    try:
        if path.endswith(".zip"):
            try:
                with zipfile.ZipFile(path) as zf:
                    names = [n for n in zf.namelist() if n.endswith(".json")]
                    if len(names) != 1:
                        raise _bad(path, f"expected one .json in the zip, found {names}")
                    raw = zf.read(names[0])
            except zipfile.BadZipFile as e:
                raise _bad(path, f"not a zip file ({e})") from e
        else:
            with open(path, "rb") as f:
                raw = f.read()
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _bad(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(path, f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e


def _get(obj: Any, key: str, kind: type, path: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise _bad(path, f"{where} has no {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _bad(path, f"{where}: {key!r} is {type(value).__name__}, not {kind.__name__}")
    return value


def read_squad(path: str | os.PathLike[str]) -> list[SquadExample]:
    """All questions of a SQuAD v1.1 / v2.0 JSON file (or a .zip holding one .json), in order.

    v2.0 questions with ``"is_impossible": true`` get ``answers=()``. Raises
    :class:`SquadFormatError` on malformed JSON (with the line), missing or mistyped keys (with
    the article / paragraph index or question id), and answers whose ``answer_start`` does not
    point at their text in the context (with the question id).
    """
    path = os.fspath(path)
    data = _get(_load_json(path), "data", list, path, "the top-level object")
    examples: list[SquadExample] = []
    for a, article in enumerate(data):
        paragraphs = _get(article, "paragraphs", list, path, f"article {a}")
        for p, paragraph in enumerate(paragraphs):
            where = f"article {a}, paragraph {p}"
            qas = _get(paragraph, "qas", list, path, where)
            if not isinstance(paragraph.get("context"), str):
                first = qas[0].get("id") if qas and isinstance(qas[0], dict) else None
                named = f" (question {first!r})" if first is not None else ""
                _get(paragraph, "context", str, path, where + named)
            context: str = paragraph["context"]
            for q, qa in enumerate(qas):
                qid = _get(qa, "id", str, path, f"{where}, question {q}")
                qwhere = f"question {qid!r}"
                question = _get(qa, "question", str, path, qwhere)
                is_impossible = bool(qa.get("is_impossible", False))
                if is_impossible:
                    raw_answers = qa.get("answers", [])
                else:
                    raw_answers = _get(qa, "answers", list, path, qwhere)
                answers: list[tuple[str, int]] = []
                for k, ans in enumerate(raw_answers):
                    awhere = f"{qwhere}, answer {k}"
                    text = _get(ans, "text", str, path, awhere)
                    start = _get(ans, "answer_start", int, path, awhere)
                    if context[start : start + len(text)] != text:
                        found = context[start : start + len(text)]
                        raise _bad(
                            path,
                            f"{awhere}: answer_start {start} gives {found!r}, not {text!r}",
                        )
                    answers.append((text, start))
                if is_impossible:
                    answers = []
                elif not answers:
                    raise _bad(path, f"{qwhere} has no answers and is not marked impossible")
                examples.append(
                    SquadExample(qid, question, context, tuple(answers), is_impossible)
                )
    return examples


# ---------------------------------------------------------------------------- char offsets
def _normalise_with_origin(word: str) -> tuple[str, list[int], list[int]]:
    """The tokenizer's normalisation of ``word``, with each output char's original span."""
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i = 0
    while i < len(word):
        if word[i : i + 2] in ("``", "''"):
            out, step = '"', 2
        else:
            c = word[i].lower()
            if not c.isascii():
                c = unicodedata.normalize("NFKD", c)
                c = "".join([x for x in c if not unicodedata.combining(x)]).lower()
            out, step = c, 1
            if not c and chars and unicodedata.combining(word[i]):
                ends[-1] = i + 1  # a lone combining mark belongs to the char before it
        for ch in out:
            chars.append(ch)
            starts.append(i)
            ends.append(i + step)
        i += step
    return "".join(chars), starts, ends


def _word_offsets(word: str, pieces: Sequence[str]) -> list[tuple[int, int]]:
    """Char spans, relative to ``word``, of the pieces ``word`` tokenizes into (module doc)."""
    texts = [p[1:] if p.startswith(_UNDERLINE) else p for p in pieces]
    norm, starts, ends = _normalise_with_origin(word)
    spans: list[tuple[int, int]] = []
    j = 0
    for text in texts:
        if not text:
            spans.append((-2, -2))  # bare "▁": filled in below
            continue
        first = -1
        for ch in text:
            while j < len(norm) and norm[j] != ch:
                j += 1
            if j == len(norm):
                return _proportional_offsets(word, texts)
            if first < 0:
                first = j
            j += 1
        spans.append((starts[first], ends[j - 1]))
    # A bare "▁" gets an empty span where the next piece's text starts (else the word's end).
    nxt = len(word)
    for k in range(len(spans) - 1, -1, -1):
        if spans[k][0] == -2:
            spans[k] = (nxt, nxt)
        else:
            nxt = spans[k][0]
    return spans


def _proportional_offsets(word: str, texts: Sequence[str]) -> list[tuple[int, int]]:
    """Fallback: each piece spans its share of the word, by length of its text."""
    total = sum(len(t) for t in texts) or 1
    spans = []
    pos = 0
    for t in texts:
        start = round(pos * len(word) / total)
        pos += len(t)
        spans.append((start, round(pos * len(word) / total)))
    return spans


def tokenize_with_offsets(
    text: str, tokenizer: _Tokenizer, cache: dict[str, Any] | None = None
) -> tuple[list[str], list[tuple[int, int]]]:
    """Pieces of ``text`` (tokenized word by word) and their [start, end) spans in ``text``.

    ``cache`` (word -> (pieces, relative spans)) may be shared across calls to skip repeated
    words.
    """
    if cache is None:
        cache = {}
    pieces: list[str] = []
    offsets: list[tuple[int, int]] = []
    for m in _WORD_RE.finditer(text):
        word = m.group()
        hit = cache.get(word)
        if hit is None:
            word_pieces = tokenizer.tokenize(word)
            hit = (word_pieces, _word_offsets(word, word_pieces))
            cache[word] = hit
        base = m.start()
        pieces.extend(hit[0])
        offsets.extend((base + s, base + e) for s, e in hit[1])
    return pieces, offsets


# ---------------------------------------------------------------------------- features
def _answer_token_span(
    offsets: Sequence[tuple[int, int]], char_start: int, char_end: int
) -> tuple[int, int] | None:
    """Inclusive piece indices covering chars [char_start, char_end), or None."""
    start = next(
        (i for i, (s, e) in enumerate(offsets) if e > s and e > char_start), None
    )
    if start is None:
        return None
    end = None
    for i in range(len(offsets) - 1, start - 1, -1):
        s, e = offsets[i]
        if e > s and s < char_end:
            end = i
            break
    if end is None or offsets[start][0] >= char_end:
        return None
    return start, end


def _windows(n_tokens: int, max_tokens: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window; windows start ``doc_stride`` apart (BERT's rule)."""
    spans = []
    start = 0
    while True:
        length = min(n_tokens - start, max_tokens)
        spans.append((start, length))
        if start + length >= n_tokens:
            return spans
        start += min(length, doc_stride)


def _max_context_window(spans: Sequence[tuple[int, int]], n_tokens: int) -> np.ndarray:
    """For each context token, the index of the window where it has the most context."""
    pos = np.arange(n_tokens)
    scores = np.full((len(spans), n_tokens), -np.inf)
    for w, (start, length) in enumerate(spans):
        end = start + length - 1
        inside = (pos >= start) & (pos <= end)
        score = np.minimum(pos - start, end - pos) + 0.01 * length
        scores[w] = np.where(inside, score, -np.inf)
    return np.argmax(scores, axis=0)  # first window on ties, as BERT's strict ">"


def make_features(
    examples: Sequence[SquadExample],
    tokenizer: _Tokenizer,
    max_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    is_training: bool = False,
) -> list[SquadFeature]:
    """Sliding-window features for ``examples`` (module doc); contexts are tokenized once."""
    if doc_stride < 1:
        raise ValueError(f"doc_stride must be >= 1, got {doc_stride}")
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    word_cache: dict[str, Any] = {}
    context_cache: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
    features: list[SquadFeature] = []
    for ex_index, ex in enumerate(examples):
        doc = context_cache.get(ex.context)
        if doc is None:
            pieces, offs = tokenize_with_offsets(ex.context, tokenizer, word_cache)
            doc = (list(tokenizer.convert_tokens_to_ids(pieces)) if pieces else [], offs)
            context_cache[ex.context] = doc
        doc_ids, doc_offsets = doc
        query_ids = list(tokenizer.convert_tokens_to_ids(tokenizer.tokenize(ex.question)) or [])
        query_ids = query_ids[:max_query_length]
        max_doc = max_length - len(query_ids) - 3
        if max_doc < 1:
            raise ValueError(
                f"max_length={max_length} leaves no room for context after a "
                f"{len(query_ids)}-piece question"
            )

        gold: tuple[int, int] | None = None
        if is_training and not ex.is_impossible and ex.answers:
            text, char_start = ex.answers[0]
            gold = _answer_token_span(doc_offsets, char_start, char_start + len(text))

        spans = _windows(len(doc_ids), max_doc, doc_stride)
        best_window = _max_context_window(spans, len(doc_ids))
        prefix = [cls_id, *query_ids, sep_id]
        for w, (start, length) in enumerate(spans):
            ids = np.full(max_length, pad_id, dtype=np.int32)
            type_ids = np.zeros(max_length, dtype=np.int32)
            mask = np.zeros(max_length, dtype=np.int32)
            offsets = np.full((max_length, 2), -1, dtype=np.int32)
            max_ctx = np.zeros(max_length, dtype=bool)
            ctx0 = len(prefix)  # feature index of the window's first context token
            n = ctx0 + length + 1
            ids[:n] = [*prefix, *doc_ids[start : start + length], sep_id]
            type_ids[ctx0:n] = 1
            mask[:n] = 1
            if length:
                offsets[ctx0 : ctx0 + length] = doc_offsets[start : start + length]
            max_ctx[ctx0 : ctx0 + length] = best_window[start : start + length] == w
            start_pos = end_pos = 0
            if gold is not None and gold[0] >= start and gold[1] < start + length:
                start_pos, end_pos = gold[0] - start + ctx0, gold[1] - start + ctx0
            features.append(
                SquadFeature(
                    ex_index, w, ids, mask, type_ids, offsets, max_ctx, start_pos, end_pos
                )
            )
    return features


def stack_features(features: Sequence[SquadFeature]) -> dict[str, np.ndarray]:
    """Model inputs [N, L] (int32) and training targets [N] (int32) for ``features``."""
    return {
        "input_ids": np.stack([f.input_ids for f in features]),
        "attention_mask": np.stack([f.attention_mask for f in features]),
        "token_type_ids": np.stack([f.token_type_ids for f in features]),
        "start_positions": np.array([f.start_position for f in features], dtype=np.int32),
        "end_positions": np.array([f.end_position for f in features], dtype=np.int32),
    }


# ---------------------------------------------------------------------------- decoding
def _top(logits: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest allowed logits, best first."""
    idx = np.flatnonzero(allowed)
    if idx.size > k:
        idx = idx[np.argpartition(-logits[idx], k - 1)[:k]]
    return idx[np.argsort(-logits[idx], kind="stable")]


def decode_nbest(
    features: Sequence[SquadFeature],
    examples: Sequence[SquadExample],
    start_logits: Any,
    end_logits: Any,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, list[dict[str, Any]]]]:
    """Like :func:`decode`, also returning each question's n-best list.

    Each n-best entry is ``{"text", "probability", "start_logit", "end_logit", "start",
    "end"}`` (``start``/``end``: char span in the context; -1 for the v2 null answer), best
    first, distinct texts, at most ``n_best_size`` (+1 for the v2 null answer).
    """
    starts = np.asarray(start_logits, dtype=np.float32)
    ends = np.asarray(end_logits, dtype=np.float32)
    if starts.shape != ends.shape or starts.ndim != 2 or starts.shape[0] != len(features):
        raise ValueError(
            f"start/end logits must both be [{len(features)}, L], got {starts.shape} and "
            f"{ends.shape}"
        )
    by_example: dict[int, list[int]] = {}
    for i, f in enumerate(features):
        by_example.setdefault(f.example_index, []).append(i)

    predictions: dict[str, str] = {}
    nbest_all: dict[str, list[dict[str, Any]]] = {}
    for ex_index, feat_ids in by_example.items():
        ex = examples[ex_index]
        # Candidate columns over all features: score, start logit, end logit, char start/end.
        cols: list[tuple[np.ndarray, ...]] = []
        null_score = np.inf
        null_parts = (0.0, 0.0)
        for i in feat_ids:
            f = features[i]
            s_log, e_log = starts[i], ends[i]
            n = min(len(s_log), len(f.offsets))
            if s_log[0] + e_log[0] < null_score:
                null_score = float(s_log[0] + e_log[0])
                null_parts = (float(s_log[0]), float(e_log[0]))
            is_ctx = f.offsets[:n, 0] >= 0
            s_idx = _top(s_log[:n], is_ctx & f.token_is_max_context[:n], n_best_size)
            e_idx = _top(e_log[:n], is_ctx, n_best_size)
            if not s_idx.size or not e_idx.size:
                continue
            length = e_idx[None, :] - s_idx[:, None] + 1
            char_s = f.offsets[s_idx, 0][:, None]
            char_e = f.offsets[e_idx, 1][None, :]
            ok = (length >= 1) & (length <= max_answer_length) & (char_e > char_s)
            a, b = np.nonzero(ok)
            sl, el = s_log[s_idx[a]], e_log[e_idx[b]]
            cols.append((sl + el, sl, el, char_s[a, 0], char_e[0, b]))

        entries: list[dict[str, Any]] = []
        if cols:
            score, sl, el, cs, ce = (np.concatenate(c) for c in zip(*cols, strict=True))
            seen: set[str] = set()
            for k in np.argsort(-score, kind="stable"):
                text = ex.context[cs[k] : ce[k]].strip()
                if not text or text in seen:
                    continue
                seen.add(text)
                entries.append(
                    {"text": text, "score": float(score[k]), "start_logit": float(sl[k]),
                     "end_logit": float(el[k]), "start": int(cs[k]), "end": int(ce[k])}
                )
                if len(entries) >= n_best_size:
                    break
        best = entries[0] if entries else None
        if version_2:
            if best is None or null_score - best["score"] > null_score_diff_threshold:
                predictions[ex.qid] = ""
            else:
                predictions[ex.qid] = best["text"]
            entries.append(
                {"text": "", "score": null_score, "start_logit": null_parts[0],
                 "end_logit": null_parts[1], "start": -1, "end": -1}
            )
            entries.sort(key=lambda d: -d["score"])
        else:
            predictions[ex.qid] = best["text"] if best is not None else ""
        scores = np.array([d.pop("score") for d in entries], dtype=np.float64)
        probs = np.exp(scores - scores.max()) if scores.size else scores
        probs = probs / probs.sum() if scores.size else probs
        for d, p in zip(entries, probs, strict=True):
            d["probability"] = float(p)
        nbest_all[ex.qid] = entries
    return predictions, nbest_all


def decode(features: Sequence[SquadFeature], examples: Sequence[SquadExample],
           start_logits: Any, end_logits: Any, **options: Any) -> dict[str, str]:
    """Answer text per question id from start/end logits [N, L] (rules in the module doc);
    ``options`` are :func:`decode_nbest`'s (``n_best_size``, ``max_answer_length``,
    ``version_2``, ``null_score_diff_threshold``)."""
    return decode_nbest(features, examples, start_logits, end_logits, **options)[0]
