"""ALBERT tokenizer: an exact, dependency-light port of transformers' 4.x slow tokenizer.

The ALBERT checkpoints were trained on sentencepiece output, and transformers' sentencepiece
based ("slow") ``AlbertTokenizer`` of the 4.x line reproduces it; the ``tokenizers`` based
one (4.x "fast", the only one in 5.x) differs on real text ("self-supervised", "3.0,",
full-width letters). This module re-implements the slow tokenizer without importing
transformers, and is tested id-for-id against it.

Pipeline for one string (each step mirrors the slow tokenizer; see ``tokenize``):

1. Lowercase everything except special tokens written in the text, one character at a time
   (so a word-final capital sigma becomes "σ", not "ς").
2. Split the text on the special tokens ``[CLS] [SEP] <unk> <pad> [MASK]``; ``[MASK]``
   swallows the whitespace before it (``lstrip``).
3. For each non-special piece: collapse whitespace, replace two backquotes or two single
   quotes with a double quote, NFKD and drop combining marks, lowercase again, encode with
   sentencepiece, and split a piece like "▁3.0," that ends in ``digit,`` into "▁3", ".",
   "0", ",". Text after a special token is encoded on its own (it starts a new word).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import sentencepiece as spm

from albert_jax.errors import TokenizerError

logger = logging.getLogger(__name__)

SPIECE_UNDERLINE = "▁"
VOCAB_FILE_NAME = "spiece.model"
CONFIG_FILE_NAME = "tokenizer_config.json"

TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")
PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")

# Settings read back from / written to ``tokenizer_config.json`` (Hugging Face key names).
_CONFIG_KEYS = ("do_lower_case", "remove_space", "keep_accents", "model_max_length")
# transformers treats model_max_length above this as "no limit" (its VERY_LARGE_INTEGER).
_LARGE_INTEGER = int(1e20)

_CAPITAL_SIGMA = "\u03a3"


def _lower_per_char(text: str) -> str:
    """Lowercase ``text`` as transformers' ``tokenize`` does: character by character.

    ``str.lower`` on a whole string applies one context rule, word-final capital sigma ->
    "ς"; lowering characters one at a time never does. That rule is CPython's only
    context-dependent mapping, so the whole-string call is exact whenever no "Σ" is present.
    """
    if _CAPITAL_SIGMA not in text:
        return text.lower()
    return "".join([c.lower() for c in text])


def _ends_in_digit_comma(piece: str) -> bool:
    """The slow tokenizer's trigger for re-splitting a piece such as "▁1,000," or "5,"."""
    return len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit()


def _read_settings(directory: str) -> dict[str, Any]:
    """Constructor settings from ``directory/tokenizer_config.json``; {} when there is none.

    Raises :class:`TokenizerError` naming the file (and the key) when it is unreadable or a
    setting has the wrong type (a string ``"false"`` would silently count as true).
    """
    config_file = os.path.join(directory, CONFIG_FILE_NAME)
    if not os.path.isfile(config_file):
        return {}
    try:
        with open(config_file, "rb") as f:
            config = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise TokenizerError(f"{config_file}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:  # Not UTF-8, or not JSON.
        raise TokenizerError(f"{config_file} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise TokenizerError(f"{config_file} must hold a JSON object, not a "
                             f"{type(config).__name__}")
    settings = {k: config[k] for k in _CONFIG_KEYS if config.get(k) is not None}
    for key, value in settings.items():
        if key == "model_max_length":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1
        else:
            ok = isinstance(value, bool)
        if not ok:
            want = "a positive number" if key == "model_max_length" else "true or false"
            raise TokenizerError(f"{config_file}: {key} must be {want}, got {value!r:.60}")
    if isinstance(settings.get("model_max_length"), float):
        # transformers writes its "no limit" sentinel as 1e30 (a float).
        value = settings["model_max_length"]
        settings["model_max_length"] = int(value) if value < _LARGE_INTEGER else None
    return settings


_SURROGATES = re.compile("[\ud800-\udfff]")


def _without_surrogates(text: str) -> str:
    """``text`` with lone UTF-16 surrogates replaced by U+FFFD (paired ones joined).

    Python strings may hold them (``surrogateescape``-decoded bytes, such as a command line
    that is not UTF-8); sentencepiece cannot take them. Valid text is returned as is.
    """
    if text.isascii() or not _SURROGATES.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _as_id_list(ids: Any) -> list[int]:
    """Accept an int, a sequence of ints, or a numpy / jax array (0-d or 1-d)."""
    if hasattr(ids, "tolist"):  # numpy / jax arrays and numpy scalars
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


class AlbertTokenizer:
    """Sentencepiece ALBERT tokenizer with the exact semantics of transformers 4.x (slow).

    Special tokens (ids in the released ``spiece.model``): ``<pad>`` 0, ``<unk>`` 1,
    ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4. Inputs are built as ``[CLS] A [SEP]`` or
    ``[CLS] A [SEP] B [SEP]`` with token types 0 for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``;
    padding goes on the right with id 0, attention mask 0 and token type 0.

    Args:
        vocab_file: path to the sentencepiece model (``spiece.model``).
        do_lower_case: lowercase the text (not special tokens written in it).
        remove_space: strip the text and collapse runs of whitespace to one space.
        keep_accents: if False, NFKD-decompose and drop combining marks ("café" -> "cafe").
        model_max_length: default ``max_length`` for truncation / ``padding="max_length"``
            when none is passed. ``None`` (as for a transformers tokenizer built from a vocab
            file) means no limit: truncation without ``max_length`` then does nothing.
    """

    model_input_names = ("input_ids", "token_type_ids", "attention_mask")
    pad_token_type_id = 0

    unk_token = "<unk>"
    pad_token = "<pad>"
    cls_token = "[CLS]"
    sep_token = "[SEP]"
    mask_token = "[MASK]"

    def __init__(
        self,
        vocab_file: str | os.PathLike[str],
        do_lower_case: bool = True,
        remove_space: bool = True,
        keep_accents: bool = False,
        model_max_length: int | None = None,
    ) -> None:
        self.vocab_file = os.fspath(vocab_file)
        if not os.path.isfile(self.vocab_file):
            raise FileNotFoundError(f"sentencepiece model not found: {self.vocab_file}")
        self.do_lower_case = do_lower_case
        self.remove_space = remove_space
        self.keep_accents = keep_accents
        if model_max_length is not None and model_max_length >= _LARGE_INTEGER:
            model_max_length = None  # a transformers config's "no limit" sentinel
        self.model_max_length = model_max_length

        try:
            if os.path.getsize(self.vocab_file) == 0:
                raise TokenizerError(f"{self.vocab_file} is empty: not a sentencepiece model")
            self._sp = spm.SentencePieceProcessor(model_file=self.vocab_file)
        except (RuntimeError, OSError) as e:  # sentencepiece reports a bad file as RuntimeError.
            raise TokenizerError(f"{self.vocab_file}: not a readable sentencepiece model "
                                 f"({str(e).strip()[:200]})") from None
        self._vocab_size: int = self._sp.get_piece_size()

        # transformers' ``all_special_tokens`` order: bos=[CLS], eos=[SEP], unk, pad, mask
        # (sep and cls are deduplicated against bos/eos).
        self._special_tokens: tuple[str, ...] = (
            self.cls_token,
            self.sep_token,
            self.unk_token,
            self.pad_token,
            self.mask_token,
        )
        unk_id = self._sp.unk_id()
        self._special_to_id: dict[str, int] = {}
        for token in self._special_tokens:
            token_id = self._sp.piece_to_id(token)
            if token_id == unk_id and token != self.unk_token:
                raise TokenizerError(
                    f"{self.vocab_file} has no piece {token!r}; not an ALBERT tokenizer")
            self._special_to_id[token] = token_id
        self._id_to_special: dict[int, str] = {v: k for k, v in self._special_to_id.items()}
        # Only [MASK] strips: it is AddedToken(lstrip=True, rstrip=False), the others are not.
        self._lstrip_tokens = frozenset({self.mask_token})
        self._rstrip_tokens: frozenset[str] = frozenset()

        # One capturing alternation, longest first, so re.split yields text/special/text/...
        # and matches the leftmost-longest choice of transformers' trie. Compiled once here
        # because every string goes through it (twice when lowercasing).
        alternation = "|".join(
            re.escape(t) for t in sorted(self._special_tokens, key=len, reverse=True)
        )
        self._special_re = re.compile(f"({alternation})")

        # Ids of vocabulary pieces that trigger the digit-comma re-split, so the id path can
        # find them with one set test per sequence instead of a Python check per piece.
        pieces = self._sp.id_to_piece(list(range(self._vocab_size)))
        self._digit_comma_ids = frozenset(
            i for i, piece in enumerate(pieces) if _ends_in_digit_comma(piece)
        )

    # ------------------------------------------------------------------ construction / io
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike[str], **kwargs: Any
    ) -> AlbertTokenizer:
        """Load from a directory holding ``spiece.model``, a ``.model`` file, or a hub name.

        A ``tokenizer_config.json`` beside ``spiece.model`` (in the directory, or in the hub
        snapshot) supplies ``do_lower_case``, ``remove_space``, ``keep_accents`` and
        ``model_max_length``; ``kwargs`` override it. Hub names are resolved with
        :func:`albert_jax.hub.resolve_file`.
        """
        path = os.fspath(name_or_path)
        if os.path.isdir(path):
            vocab_file = os.path.join(path, VOCAB_FILE_NAME)
            if not os.path.isfile(vocab_file):
                raise FileNotFoundError(f"no {VOCAB_FILE_NAME} in directory {path}")
            settings = _read_settings(path)
        elif os.path.isfile(path):
            vocab_file, settings = path, {}
        else:
            from albert_jax import hub  # lazy: network / cache code is only needed here

            vocab_file = hub.resolve_file(path, VOCAB_FILE_NAME)
            # A config downloaded next to it (same snapshot) is read; none is fetched.
            settings = _read_settings(os.path.dirname(vocab_file))
        settings.update(kwargs)
        return cls(vocab_file, **settings)

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> tuple[str, str]:
        """Write ``spiece.model`` and ``tokenizer_config.json`` into ``save_directory``.

        The directory loads back with :meth:`from_pretrained` and with transformers'
        ``AlbertTokenizer.from_pretrained``. Returns the two written paths.
        """
        directory = os.fspath(save_directory)
        os.makedirs(directory, exist_ok=True)
        out_vocab = os.path.join(directory, VOCAB_FILE_NAME)
        if os.path.isfile(self.vocab_file):
            if os.path.abspath(self.vocab_file) != os.path.abspath(out_vocab):
                shutil.copyfile(self.vocab_file, out_vocab)
        else:  # the source file was removed since loading: write the in-memory model
            with open(out_vocab, "wb") as f:
                f.write(self._sp.serialized_model_proto())
        config: dict[str, Any] = {
            "tokenizer_class": "AlbertTokenizer",
            "do_lower_case": self.do_lower_case,
            "remove_space": self.remove_space,
            "keep_accents": self.keep_accents,
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        out_config = os.path.join(directory, CONFIG_FILE_NAME)
        with open(out_config, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        return out_vocab, out_config

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        """Number of sentencepiece pieces (30,000 for the released models)."""
        return self._vocab_size

    def __len__(self) -> int:
        return self._vocab_size

    @property
    def pad_token_id(self) -> int:
        return self._special_to_id[self.pad_token]

    @property
    def unk_token_id(self) -> int:
        return self._special_to_id[self.unk_token]

    @property
    def cls_token_id(self) -> int:
        return self._special_to_id[self.cls_token]

    @property
    def sep_token_id(self) -> int:
        return self._special_to_id[self.sep_token]

    @property
    def mask_token_id(self) -> int:
        return self._special_to_id[self.mask_token]

    @property
    def all_special_tokens(self) -> list[str]:
        """``["[CLS]", "[SEP]", "<unk>", "<pad>", "[MASK]"]`` (transformers' order)."""
        return list(self._special_tokens)

    @property
    def all_special_ids(self) -> list[int]:
        """``[2, 3, 1, 0, 4]`` for the released model (same order as transformers)."""
        return [self._special_to_id[t] for t in self._special_tokens]

    def get_vocab(self) -> dict[str, int]:
        """Piece -> id for every piece of the sentencepiece model."""
        pieces = self._sp.id_to_piece(list(range(self._vocab_size)))
        return {piece: i for i, piece in enumerate(pieces)}

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Piece(s) -> id(s); a string outside the vocabulary maps to ``unk_token_id``."""
        if isinstance(tokens, str):
            return self._sp.piece_to_id(tokens)
        return self._sp.piece_to_id(list(tokens)) if tokens else []

    def convert_ids_to_tokens(
        self, ids: int | Iterable[int], skip_special_tokens: bool = False
    ) -> str | list[str]:
        """Id(s) -> piece(s). A single int gives a str (never skipped, as in transformers)."""
        if isinstance(ids, (int, np.integer)):
            return self._sp.id_to_piece(int(ids))
        id_list = _as_id_list(ids)
        if skip_special_tokens:
            id_list = [i for i in id_list if i not in self._id_to_special]
        return self._sp.id_to_piece(id_list) if id_list else []

    # ------------------------------------------------------------------ tokenization
    def preprocess_text(self, inputs: str) -> str:
        """Normalise one special-token-free string before sentencepiece (the slow recipe)."""
        outputs = " ".join(inputs.strip().split()) if self.remove_space else inputs
        outputs = outputs.replace("``", '"').replace("''", '"')
        # NFKD is the identity on ASCII and ASCII has no combining marks: skip the per-char scan.
        if not self.keep_accents and not outputs.isascii():
            outputs = unicodedata.normalize("NFKD", outputs)
            outputs = "".join([c for c in outputs if not unicodedata.combining(c)])
        if self.do_lower_case:
            outputs = outputs.lower()  # whole-string lower, as in the slow preprocess_text
        return outputs

    def _split_special(self, text: str) -> list[str]:
        """Split ``text`` into ``[text, special, text, special, ..., text]`` (odd = special).

        Lowercases the text parts first, then splits (so "<UNK>" becomes the special "<unk>"
        but "[mask]" stays text), then applies the special tokens' lstrip/rstrip.
        """
        text = _without_surrogates(text)
        if self.do_lower_case:
            parts = self._special_re.split(text)
            if len(parts) == 1:
                text = _lower_per_char(text)
            else:
                parts[0::2] = [_lower_per_char(p) for p in parts[0::2]]
                text = "".join(parts)
        parts = self._special_re.split(text)
        for i in range(1, len(parts), 2):
            token = parts[i]
            # Empty neighbours (two specials in a row) are falsy, as transformers' None/"".
            if token in self._lstrip_tokens and parts[i - 1]:
                parts[i - 1] = parts[i - 1].rstrip()
            if token in self._rstrip_tokens and parts[i + 1]:
                parts[i + 1] = parts[i + 1].lstrip()
        return parts

    def _split_digit_comma(self, piece: str) -> list[str]:
        """ "▁3.0," -> ["▁3", ".", "0", ","] (BERT's rule so "9,9" is not "▁9," "9")."""
        sub = self._sp.encode(piece[:-1].replace(SPIECE_UNDERLINE, ""), out_type=str)
        # Re-encoding adds a word-start "▁" the original piece may not have had.
        if piece[0] != SPIECE_UNDERLINE and sub[0][0] == SPIECE_UNDERLINE:
            if len(sub[0]) == 1:
                sub = sub[1:]
            else:
                sub[0] = sub[0][1:]
        sub.append(piece[-1])
        return sub

    def _text_to_pieces(self, text: str) -> list[str]:
        """Special-token-free text -> sentencepiece pieces (slow ``_tokenize``)."""
        pieces = self._sp.encode(self.preprocess_text(text), out_type=str)
        out: list[str] = []
        for piece in pieces:
            if _ends_in_digit_comma(piece):
                out.extend(self._split_digit_comma(piece))
            else:
                out.append(piece)
        return out

    def tokenize(self, text: str) -> list[str]:
        """Text -> pieces, special tokens written in the text kept whole.

        >>> tok.tokenize("Self-supervised [MASK].")  # doctest: +SKIP
        ['▁self', '-', 'super', 'vis', 'ed', '[MASK]', '▁', '.']

        Text after a special token is encoded on its own, so it starts a new word: the
        "." above gets a bare "▁" (id 13) in front of it.
        """
        parts = self._split_special(text)
        tokens: list[str] = []
        for i, part in enumerate(parts):
            if i % 2:
                tokens.append(part)
            elif part:
                tokens.extend(self._text_to_pieces(part))
        return tokens

    def _fix_digit_comma_ids(self, ids: list[int]) -> list[int]:
        out: list[int] = []
        for i in ids:
            if i in self._digit_comma_ids:
                out.extend(self._sp.piece_to_id(self._split_digit_comma(self._sp.id_to_piece(i))))
            else:
                out.append(i)
        return out

    def _encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """Texts -> ids without [CLS]/[SEP]; equals ``convert_tokens_to_ids(tokenize(t))``.

        All special-token-free parts of all texts go to sentencepiece in one batched (C++,
        multithreaded) call, which is what makes scoring thousands of lines cheap.
        """
        split = [self._split_special(t) for t in texts]
        flat = [self.preprocess_text(p) for parts in split for p in parts[0::2]]
        encoded: list[list[int]] = self._sp.encode(flat) if flat else []
        out: list[list[int]] = []
        k = 0
        for parts in split:
            ids: list[int] = []
            for i, part in enumerate(parts):
                if i % 2:
                    ids.append(self._special_to_id[part])
                    continue
                seg = encoded[k]
                k += 1
                if not self._digit_comma_ids.isdisjoint(seg):
                    seg = self._fix_digit_comma_ids(seg)
                ids.extend(seg)
            out.append(ids)
        return out

    # ------------------------------------------------------------------ model inputs
    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """2 for ``[CLS] A [SEP]``, 3 for ``[CLS] A [SEP] B [SEP]``."""
        return 3 if pair else 2

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``; shape [len(A) + len(B) + 2|3]."""
        cls, sep = [self.cls_token_id], [self.sep_token_id]
        if token_ids_1 is None:
            return cls + token_ids_0 + sep
        return cls + token_ids_0 + sep + token_ids_1 + sep

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """0 over ``[CLS] A [SEP]``, 1 over ``B [SEP]``; same length as the built inputs."""
        first = [0] * (len(token_ids_0) + 2)
        if token_ids_1 is None:
            return first
        return first + [1] * (len(token_ids_1) + 1)

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """1 where a special token is (or would be added), 0 elsewhere."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("token_ids_1 must be None when already_has_special_tokens=True")
            return [1 if i in self._id_to_special else 0 for i in token_ids_0]
        mask = [1] + [0] * len(token_ids_0) + [1]
        if token_ids_1 is not None:
            mask += [0] * len(token_ids_1) + [1]
        return mask

    def _resolve_strategies(
        self,
        padding: bool | str,
        truncation: bool | str | None,
        max_length: int | None,
        pad_to_multiple_of: int | None,
    ) -> tuple[str, str, int | None]:
        """Map the user's arguments to (padding, truncation, max_length) like transformers."""
        # transformers' backward-compatible rule: max_length alone turns truncation on.
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"

        if padding is True:
            if max_length is not None and truncation in (None, False, "do_not_truncate"):
                logger.warning(
                    "`max_length` is ignored when `padding`=`True` and there is no truncation "
                    "strategy. To pad to max length, use `padding='max_length'`."
                )
            pad_strategy = "longest"
        elif padding is False or padding is None:
            pad_strategy = "do_not_pad"
        elif padding in PADDING_STRATEGIES:
            pad_strategy = str(padding)
        else:
            raise ValueError(
                f"padding must be a bool or one of {PADDING_STRATEGIES}, got {padding!r}"
            )

        if truncation is True:
            trunc_strategy = "longest_first"
        elif truncation is False or truncation is None:
            trunc_strategy = "do_not_truncate"
        elif truncation in TRUNCATION_STRATEGIES:
            trunc_strategy = str(truncation)
        else:
            raise ValueError(
                f"truncation must be a bool or one of {TRUNCATION_STRATEGIES}, got {truncation!r}"
            )

        if max_length is None:
            if pad_strategy == "max_length":
                if self.model_max_length is None:
                    logger.warning(
                        "Asking to pad to max_length but no maximum length is provided and the "
                        "tokenizer has no model_max_length. Default to no padding."
                    )
                    pad_strategy = "do_not_pad"
                else:
                    max_length = self.model_max_length
            if trunc_strategy != "do_not_truncate":
                if self.model_max_length is None:
                    logger.warning(
                        "Asking to truncate to max_length but no maximum length is provided and "
                        "the tokenizer has no model_max_length. Default to no truncation."
                    )
                    trunc_strategy = "do_not_truncate"
                else:
                    max_length = self.model_max_length

        if (
            trunc_strategy != "do_not_truncate"
            and pad_strategy != "do_not_pad"
            and pad_to_multiple_of is not None
            and max_length is not None
            and max_length % pad_to_multiple_of != 0
        ):
            raise ValueError(
                "Truncation and padding are both activated but truncation length "
                f"({max_length}) is not a multiple of pad_to_multiple_of ({pad_to_multiple_of})."
            )
        return pad_strategy, trunc_strategy, max_length

    @staticmethod
    def _truncate(
        ids: list[int], pair: list[int] | None, num_to_remove: int, strategy: str
    ) -> tuple[list[int], list[int] | None]:
        """Remove ``num_to_remove`` tokens from the right, exactly as transformers 4.x.

        Where the chosen sequence is too short to lose that many tokens, nothing is removed
        and an error is logged (the output is then longer than ``max_length``).
        """
        if num_to_remove <= 0:
            return ids, pair
        if strategy == "only_first" or (strategy == "longest_first" and pair is None):
            if len(ids) > num_to_remove:
                return ids[:-num_to_remove], pair
            msg = (
                f"We need to remove {num_to_remove} to truncate the input but the first "
                f"sequence has a length {len(ids)}. "
            )
            if strategy == "only_first":
                msg += (
                    "Please select another truncation strategy than only_first, "
                    "for instance 'longest_first' or 'only_second'."
                )
            logger.error(msg)
        elif strategy == "longest_first":
            # Closed form of "remove one token from the longer sequence at a time": first
            # even out the lengths, then split the rest, the second sequence taking the odd one.
            len_ids, len_pair = len(ids), len(pair)
            first_remove = min(abs(len_pair - len_ids), num_to_remove)
            second_remove = num_to_remove - first_remove
            if len_ids > len_pair:
                ids_to_move = first_remove + second_remove // 2
                pair_to_move = second_remove - second_remove // 2
            else:
                ids_to_move = second_remove // 2
                pair_to_move = first_remove + second_remove - second_remove // 2
            # Slicing past the start leaves [], so max_length below 3 empties both sequences.
            if ids_to_move > 0:
                ids = ids[:-ids_to_move]
            if pair_to_move > 0:
                pair = pair[:-pair_to_move]
        elif strategy == "only_second" and pair is not None:
            if len(pair) > num_to_remove:
                return ids, pair[:-num_to_remove]
            logger.error(
                f"We need to remove {num_to_remove} to truncate the input but the second "
                f"sequence has a length {len(pair)}. Please select another truncation strategy "
                "than only_second, for instance 'longest_first' or 'only_first'."
            )
        elif strategy == "only_second":
            # transformers silently returns the single sequence untruncated; say so.
            logger.warning(
                "truncation='only_second' has no second sequence to truncate; the input is "
                "returned untruncated."
            )
        return ids, pair

    def _build(
        self,
        ids: list[int],
        pair: list[int] | None,
        add_special_tokens: bool,
        truncation: str,
        max_length: int | None,
    ) -> tuple[list[int], list[int]]:
        """Truncate and add specials: returns (input_ids, token_type_ids), shape [L] each."""
        total = len(ids) + (len(pair) if pair is not None else 0)
        if add_special_tokens:
            total += self.num_special_tokens_to_add(pair is not None)
        # `max_length` 0 is falsy in transformers too: no truncation.
        if truncation != "do_not_truncate" and max_length and total > max_length:
            ids, pair = self._truncate(ids, pair, total - max_length, truncation)
        if add_special_tokens:
            return (
                self.build_inputs_with_special_tokens(ids, pair),
                self.create_token_type_ids_from_sequences(ids, pair),
            )
        if pair is None:
            return list(ids), [0] * len(ids)
        return ids + pair, [0] * (len(ids) + len(pair))

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        padding: bool | str = False,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        """Encode one text / pair, or a batch of them, into model inputs.

        Args:
            text: a string, or a list/tuple of strings (a batch of B).
            text_pair: second segments: a string for a single ``text``, or a list of B strings.
            add_special_tokens: add ``[CLS]``/``[SEP]``.
            truncation: ``True``/``"longest_first"``, ``"only_first"``, ``"only_second"``,
                ``False``/``"do_not_truncate"``. ``None`` (default) means ``"longest_first"``
                if ``max_length`` is given and ``padding`` is False, else no truncation
                (transformers' rule).
            max_length: length limit for truncation and for ``padding="max_length"``
                (counting special tokens).
            padding: ``True``/``"longest"`` (pad to the longest in the batch),
                ``"max_length"``, ``False``/``"do_not_pad"``. Padding is on the right.
            pad_to_multiple_of: round the padded length up to a multiple of this.
            return_tensors: ``None`` for Python lists, ``"np"`` for int32 arrays.

        Returns:
            ``{"input_ids", "token_type_ids", "attention_mask"}``: for a single text, lists of
            length L; for a batch, B lists; with ``return_tensors="np"``, int32 arrays of shape
            [B, L] (B = 1 for a single text), which needs equal lengths (pad) or raises
            ValueError.
        """
        batched = isinstance(text, (list, tuple))
        if batched:
            texts = list(text)
            if isinstance(text_pair, str):
                raise TypeError(
                    "when tokenizing batches of text, `text_pair` must be a list or tuple with "
                    "the same length as `text`."
                )
            pairs = None if text_pair is None else list(text_pair)
            if pairs is not None and len(pairs) != len(texts):
                raise ValueError(
                    f"batch length of `text`: {len(texts)} does not match batch length of "
                    f"`text_pair`: {len(pairs)}."
                )
        else:
            texts = [text]
            if text_pair is not None and not isinstance(text_pair, str):
                raise TypeError("for a single `text`, `text_pair` must be a string")
            pairs = None if text_pair is None else [text_pair]
        for t in texts + (pairs or []):
            if not isinstance(t, str):
                raise ValueError(f"text inputs must be strings, got {type(t).__name__}")
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors must be None or 'np', got {return_tensors!r}")

        pad_strategy, trunc_strategy, max_length = self._resolve_strategies(
            padding, truncation, max_length, pad_to_multiple_of
        )

        # One sentencepiece call for first and second segments together.
        encoded = self._encode_texts(texts + (pairs or []))
        n = len(texts)
        firsts, seconds = encoded[:n], (encoded[n:] if pairs is not None else [None] * n)
        rows = [
            self._build(a, b, add_special_tokens, trunc_strategy, max_length)
            for a, b in zip(firsts, seconds, strict=True)
        ]

        if pad_strategy == "longest":
            target: int | None = max((len(r[0]) for r in rows), default=0)
        elif pad_strategy == "max_length":
            target = max_length
        else:
            target = None
        if target is not None and pad_to_multiple_of is not None and target % pad_to_multiple_of:
            target = (target // pad_to_multiple_of + 1) * pad_to_multiple_of

        if return_tensors == "np":
            return self._to_numpy(rows, target)

        input_ids, token_type_ids, attention_mask = [], [], []
        pad_id, pad_type = self.pad_token_id, self.pad_token_type_id
        for ids, types in rows:
            # Longer rows (padding="max_length" without truncation) are left as they are.
            diff = (target - len(ids)) if target is not None else 0
            if diff > 0:
                input_ids.append(ids + [pad_id] * diff)
                token_type_ids.append(types + [pad_type] * diff)
                attention_mask.append([1] * len(ids) + [0] * diff)
            else:
                input_ids.append(ids)
                token_type_ids.append(types)
                attention_mask.append([1] * len(ids))
        if not batched:
            return {
                "input_ids": input_ids[0],
                "token_type_ids": token_type_ids[0],
                "attention_mask": attention_mask[0],
            }
        return {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
        }

    def _to_numpy(
        self, rows: list[tuple[list[int], list[int]]], target: int | None
    ) -> dict[str, np.ndarray]:
        """Rows -> int32 arrays [B, L], right-padded to ``target``; ragged rows raise."""
        # Lengths after list-style padding: short rows grow to `target`, longer ones stay.
        lengths = [len(ids) if target is None else max(len(ids), target) for ids, _ in rows]
        if len(set(lengths)) > 1:
            raise ValueError(
                "return_tensors='np' needs sequences of one length, got lengths "
                f"{sorted(set(lengths))}: pass padding=True (or padding='max_length' with "
                "max_length) and truncation=True with max_length."
            )
        width = lengths[0] if lengths else (target or 0)
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int32)
        token_type_ids = np.full((len(rows), width), self.pad_token_type_id, dtype=np.int32)
        attention_mask = np.zeros((len(rows), width), dtype=np.int32)
        for b, (ids, types) in enumerate(rows):
            input_ids[b, : len(ids)] = ids
            token_type_ids[b, : len(types)] = types
            attention_mask[b, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
        }

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        add_special_tokens: bool = True,
        truncation: bool | str | None = None,
        max_length: int | None = None,
    ) -> list[int]:
        """Text (or pair) -> input ids, ``[CLS] A [SEP] (B [SEP])`` by default; shape [L]."""
        return self(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            truncation=truncation,
            max_length=max_length,
        )["input_ids"]

    # ------------------------------------------------------------------ decoding
    def decode(
        self,
        ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool = True,
    ) -> str:
        """Ids (int, list, or 1-d array of shape [L]) -> text, as the slow tokenizer decodes.

        Runs of ordinary ids are decoded by sentencepiece; each special token is appended
        right after the run before it, with one space only in front of the first of a group
        of consecutive specials. So ``[CLS] hello world [SEP]`` decodes to
        ``"[CLS] hello world[SEP]"`` and ``a [MASK] b`` to ``"a[MASK] b"``. The result is
        stripped, then (if ``clean_up_tokenization_spaces``) " ." " ?" " !" " ," " ' " " n't"
        " 'm" " 's" " 've" " 're" lose their space.
        """
        id_list = _as_id_list(ids)
        out = ""
        run: list[int] = []
        prev_is_special = False
        for i in id_list:
            special = self._id_to_special.get(i)
            if special is None:
                run.append(i)
                prev_is_special = False
                continue
            if skip_special_tokens:
                continue
            if not prev_is_special:
                out += " "
            out += self._sp.decode(run) + special
            prev_is_special = True
            run = []
        out += self._sp.decode(run)
        out = out.strip()
        if clean_up_tokenization_spaces:
            out = self.clean_up_tokenization(out)
        return out

    def batch_decode(
        self,
        sequences: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool = True,
    ) -> list[str]:
        """Decode each row of ``sequences`` (list of id lists, or an array of shape [B, L])."""
        return [
            self.decode(seq, skip_special_tokens, clean_up_tokenization_spaces) for seq in sequences
        ]

    @staticmethod
    def clean_up_tokenization(out_string: str) -> str:
        """Remove the space before English punctuation and contractions (transformers' rule)."""
        return (
            out_string.replace(" .", ".")
            .replace(" ?", "?")
            .replace(" !", "!")
            .replace(" ,", ",")
            .replace(" ' ", "'")
            .replace(" n't", "n't")
            .replace(" 'm", "'m")
            .replace(" 's", "'s")
            .replace(" 've", "'ve")
            .replace(" 're", "'re")
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_file={self.vocab_file!r}, vocab_size={self.vocab_size}, "
            f"do_lower_case={self.do_lower_case}, remove_space={self.remove_space}, "
            f"keep_accents={self.keep_accents}, model_max_length={self.model_max_length})"
        )
