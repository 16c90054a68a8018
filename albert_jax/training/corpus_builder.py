"""A TFDS builder for local plain-text corpora, usable without TensorFlow.

``LocalTextCorpus`` reads ``*.txt`` files from ``manual_dir`` and writes one record per
document: ``{"id": "<file>:<k>", "sentences": [str, ...]}``. It is meant to be prepared with
``file_format="array_record"`` and read with ``builder.as_data_source()``, the TFDS path that
needs no TensorFlow (``as_dataset`` does). Records read back as ``bytes`` (real sources) or
``str`` (``tfds.testing.mock_data``);
:func:`albert_jax.training.pretrain_data.document_sentences` normalises.

Two input formats (``LocalTextCorpusConfig.text_format``):

* ``"lines"``: BERT/ALBERT's format. One sentence per line, documents separated by blank
  lines; a file may hold many documents.
* ``"paragraphs"``: plain prose (e.g. Project Gutenberg books). A whole file is one document
  (books give long documents, which SOP needs); blank-line separated paragraphs are joined
  into one line each and split into sentences by :func:`split_sentences`.

Files are decoded as UTF-8, falling back to latin-1 for the whole file when that fails (so a
latin-1 file never half-decodes), and CRLF / CR line ends are normalised to LF.

Example::

    builder = LocalTextCorpus(data_dir=d, config=LocalTextCorpusConfig(
        name="gutenberg", validation_files=("shakespeare-*",)), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=corpus_dir))
    train = builder.as_data_source()["train"]   # random access: train[i] -> dict
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

TEXT_FORMATS = ("lines", "paragraphs")

# Tokens ending in "." that rarely end a sentence (compared lowercase, without the dot).
_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "st",
        "jr",
        "sr",
        "prof",
        "rev",
        "gen",
        "col",
        "capt",
        "lt",
        "sgt",
        "hon",
        "messrs",
        "mme",
        "mlle",
        "vs",
        "etc",
        "viz",
        "no",
        "vol",
        "ch",
        "fig",
        "e.g",
        "i.e",
        "a.m",
        "p.m",
    ]
)
# Candidate sentence end: terminal punctuation, optional closing quotes/brackets, whitespace,
# then something that can open a sentence (optional opening quote/bracket, then an
# uppercase letter or digit).
_BOUNDARY = re.compile(r"[.!?]+[\"'\u2019\u201d)\]]*(\s+)(?=[\"'\u2018\u201c(\[_]*[A-Z0-9])")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)\.$")


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph (already one line) into sentences; a simple rule-based splitter.

    A sentence ends at ``.``, ``!`` or ``?`` (plus closing quotes/brackets) when whitespace and
    an uppercase letter or digit (possibly after an opening quote) follow, except after a
    known abbreviation ("Mr.", "St.", ...) or a single initial ("J."). Text with no terminal
    punctuation (headings, verse lines) stays one sentence. Good enough for SOP segments,
    which span several sentences anyway; it is not a linguistic tokenizer.
    """
    sentences: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(paragraph):
        head = paragraph[start : m.start(1)]
        word = _WORD_BEFORE.search(head)
        if word is not None and head.endswith("."):
            w = word.group(1).lower()
            if w in _ABBREVIATIONS or len(w) == 1:
                continue
        sentences.append(head.strip())
        start = m.end(1)
    sentences.append(paragraph[start:].strip())
    return [s for s in sentences if s]


def read_text(path: str | os.PathLike[str]) -> str:
    """File contents as text: UTF-8, else latin-1 (whole file); CRLF/CR -> LF."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # never fails: every byte is a code point
    if text.startswith("\ufeff"):  # a UTF-8 byte-order mark is not text
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _blocks(text: str) -> list[list[str]]:
    """Blank-line separated blocks of stripped, non-empty lines."""
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in text.split("\n"):
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def parse_documents(text: str, text_format: str) -> list[list[str]]:
    """Text of one file -> documents, each a list of sentences (see the module docstring)."""
    if text_format == "lines":
        return _blocks(text)
    if text_format == "paragraphs":
        sentences = [s for block in _blocks(text) for s in split_sentences(" ".join(block))]
        return [sentences] if sentences else []
    raise ValueError(f"text_format must be one of {TEXT_FORMATS}, got {text_format!r}")


@dataclasses.dataclass(eq=False)
class LocalTextCorpusConfig(tfds.core.BuilderConfig):
    """Config of :class:`LocalTextCorpus`.

    Attributes:
        text_format: ``"lines"`` or ``"paragraphs"`` (module docstring).
        file_pattern: glob of the files read in ``manual_dir`` (non-recursive).
        validation_files: ``fnmatch`` patterns of file names whose documents form the
            ``validation`` split (held out from ``train``); empty means no validation split.

    Prepared data lives under ``data_dir/local_text_corpus/<name>/<version>``: give configs
    with different options different names.
    """

    text_format: str = "paragraphs"
    file_pattern: str = "*.txt"
    validation_files: tuple[str, ...] = ()


class LocalTextCorpus(tfds.core.GeneratorBasedBuilder):
    """Documents (lists of sentences) from local ``.txt`` files in ``manual_dir``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}  # noqa: RUF012 (TFDS class attribute)
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the corpus' .txt files in manual_dir."
    BUILDER_CONFIGS = [  # noqa: RUF012 (TFDS class attribute)
        LocalTextCorpusConfig(name="paragraphs", text_format="paragraphs"),
        LocalTextCorpusConfig(name="lines", text_format="lines"),
    ]

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. TFDS' default probes ``importlib_resources`` (not installed here)."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),  # "<file name>:<document index in file>"
                    "sentences": tfds.features.Sequence(tfds.features.Text()),
                }
            ),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        config: LocalTextCorpusConfig = self.builder_config  # type: ignore[assignment]
        if config.text_format not in TEXT_FORMATS:
            raise ValueError(f"text_format must be one of {TEXT_FORMATS}")
        files = sorted(Path(dl_manager.manual_dir).glob(config.file_pattern))
        files = [f for f in files if f.is_file()]
        if not files:
            raise FileNotFoundError(f"no {config.file_pattern} files in {dl_manager.manual_dir}")

        def held_out(f: Path) -> bool:
            return any(fnmatch.fnmatch(f.name, p) for p in config.validation_files)

        train = [f for f in files if not held_out(f)]
        splits = {"train": self._generate_examples(train)}
        if config.validation_files:
            validation = [f for f in files if held_out(f)]
            if not validation:
                raise ValueError(f"validation_files {config.validation_files} match no file")
            splits["validation"] = self._generate_examples(validation)
        return splits

    def _generate_examples(self, files: list[Path]) -> Iterator[tuple[str, dict[str, Any]]]:
        text_format = self.builder_config.text_format  # type: ignore[attr-defined]
        for f in files:
            for k, sentences in enumerate(parse_documents(read_text(f), text_format)):
                key = f"{f.name}:{k}"
                yield key, {"id": key, "sentences": sentences}
