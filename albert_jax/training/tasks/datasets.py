"""Fine-tuning inputs: GLUE (TFDS), CoNLL token files and multiple-choice JSON Lines.

Every reader fails on bad input with :class:`DataError` (a ``ValueError``) whose message starts
with ``"<file>, line <n>: "`` (1-based), so a bad row of a 400k-line file is found at once.

GLUE
----
``LocalGlue`` is a TFDS builder, one config per task (``cola sst2 mrpc qqp stsb mnli qnli rte
wnli ax``), that reads the GLUE distribution's TSV files from ``manual_dir``: ``train.tsv``,
``dev.tsv`` and ``test.tsv`` (MNLI: ``dev_matched.tsv``, ``dev_mismatched.tsv``,
``test_matched.tsv``, ``test_mismatched.tsv``; AX: ``AX.tsv`` or ``diagnostic.tsv``).
``manual_dir`` may be the task's folder or the GLUE root holding ``CoLA/``, ``SST-2/``,
``MNLI/``, ... For CoLA the original ``cola_public/raw`` layout (``in_domain_train.tsv``,
``in_domain_dev.tsv``) is accepted too. Splits are those whose file exists: ``train``,
``validation`` (MNLI: ``validation_matched``, ``validation_mismatched``) and ``test`` (MNLI:
``test_matched``, ``test_mismatched``), as in the TFDS catalogue's ``glue/<task>``.

TSV rows are tab-split without quoting (GLUE's ``csv.QUOTE_NONE``); columns are found by header
name (CoLA train/dev have no header: ``source, label, mark, sentence``). Records::

    {"idx": int, "text_a": str, "text_b": str ("" for single-sentence tasks),
     "label": int class index (-1 unlabeled) | float (stsb; -1.0 unlabeled)}

Labels may be written as class names or as class indices; class order is TFDS ``glue``'s
(:data:`GLUE_TASKS`), so models trained on local files and on the catalogue agree.

:func:`load_glue` is the front door: local files when ``manual_dir`` is given (prepared once as
array_record under ``data_dir``, rebuilt when the TSV files change), else the TFDS catalogue.

CoNLL
-----
:func:`read_conll`: one token per line, whitespace-separated columns, the token in column 0
and its tag in ``tag_column`` (default: the last); every line of a file has the same number
of columns; blank lines end sentences; ``-DOCSTART-`` lines are skipped. Tags are kept as
written (IOB1/IOB2/BIOES alike).

Multiple choice (RACE, SWAG, ...)
---------------------------------
:func:`read_multiple_choice` reads JSON Lines, one question per line::

    {"id": "q1", "context": "the passage (RACE) or first sentence (SWAG), may be empty",
     "question": "the question or second-sentence start, may be empty",
     "choices": ["...", "...", "...", "..."], "label": 2}

``id`` is optional (default ``"<file name>:<line>"``); ``label`` is optional for test files
(read back as -1). RACE's own field names are accepted as well: ``article`` (context),
``question``, ``options`` (choices), ``answer`` as a letter ``"A"``..; a RACE file's object
with ``questions``/``options``/``answers`` lists expands into one example per question (ids
``"<id>-<k>"``), so RACE's files, one JSON object each, can be concatenated into JSON Lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import shutil
import socket
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils


class DataError(ValueError):
    """Malformed fine-tuning data, or data that cannot be loaded."""


def _where(path: str | os.PathLike[str], line: int) -> str:
    return f"{path}, line {line}"


# --------------------------------------------------------------------------------------------
# GLUE


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """How one GLUE task's TSV files are laid out.

    Attributes:
        name: TFDS config name (``glue/<name>``).
        folder: the task's folder in the GLUE distribution.
        text_a, text_b: header names of the text columns (``text_b`` None: single sentence).
        label: header name of the label column.
        label_names: class names in TFDS ``glue``'s order; None for regression (stsb).
        catalogue_text: TFDS ``glue``'s feature names for text_a / text_b.
    """

    name: str
    folder: str
    text_a: str
    text_b: str | None
    label: str
    label_names: tuple[str, ...] | None
    catalogue_text: tuple[str, ...]

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    def split_files(self) -> dict[str, tuple[str, ...]]:
        """``{split: candidate file names}`` (the first that exists is read)."""
        if self.name == "mnli":
            return {
                "train": ("train.tsv",),
                "validation_matched": ("dev_matched.tsv",),
                "validation_mismatched": ("dev_mismatched.tsv",),
                "test_matched": ("test_matched.tsv",),
                "test_mismatched": ("test_mismatched.tsv",),
            }
        if self.name == "ax":
            return {"test": ("AX.tsv", "diagnostic.tsv", "test.tsv")}
        if self.name == "cola":  # GLUE's names, then cola_public/raw's
            return {
                "train": ("train.tsv", "in_domain_train.tsv"),
                "validation": ("dev.tsv", "in_domain_dev.tsv"),
                "test": ("test.tsv",),
            }
        return {"train": ("train.tsv",), "validation": ("dev.tsv",), "test": ("test.tsv",)}


_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask(
            "cola", "CoLA", "sentence", None, "label", ("unacceptable", "acceptable"), ("sentence",)
        ),
        GlueTask(
            "sst2", "SST-2", "sentence", None, "label", ("negative", "positive"), ("sentence",)
        ),
        GlueTask(
            "mrpc",
            "MRPC",
            "#1 String",
            "#2 String",
            "Quality",
            ("not_equivalent", "equivalent"),
            ("sentence1", "sentence2"),
        ),
        GlueTask(
            "qqp",
            "QQP",
            "question1",
            "question2",
            "is_duplicate",
            ("not_duplicate", "duplicate"),
            ("question1", "question2"),
        ),
        GlueTask(
            "stsb", "STS-B", "sentence1", "sentence2", "score", None, ("sentence1", "sentence2")
        ),
        GlueTask(
            "mnli", "MNLI", "sentence1", "sentence2", "gold_label", _NLI3, ("premise", "hypothesis")
        ),
        GlueTask("qnli", "QNLI", "question", "sentence", "label", _NLI2, ("question", "sentence")),
        GlueTask(
            "rte", "RTE", "sentence1", "sentence2", "label", _NLI2, ("sentence1", "sentence2")
        ),
        # WNLI's files write 1 for entailment: TFDS orders its names accordingly.
        GlueTask(
            "wnli",
            "WNLI",
            "sentence1",
            "sentence2",
            "label",
            ("not_entailment", "entailment"),
            ("sentence1", "sentence2"),
        ),
        GlueTask(
            "ax", "diagnostic", "sentence1", "sentence2", "label", _NLI3, ("premise", "hypothesis")
        ),
    ]
}
# CoLA's train/dev files have no header: source, label, original mark, sentence.
_COLA_COLUMNS = {"label": 1, "sentence": 3}


def _task(name: str) -> GlueTask:
    try:
        return GLUE_TASKS[name]
    except KeyError:
        raise DataError(f"unknown GLUE task {name!r}; known: {', '.join(GLUE_TASKS)}") from None


def _search_dirs(task: GlueTask, manual_dir: Path) -> list[Path]:
    dirs = [manual_dir, manual_dir / task.folder]
    if task.name == "cola":
        dirs += [d / sub for d in dirs[:2] for sub in ("raw", "cola_public/raw")]
    return dirs


def glue_files(task: str, manual_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """``{split: TSV file}`` for the splits of ``task`` whose file exists in ``manual_dir``."""
    spec = _task(task)
    dirs = _search_dirs(spec, Path(manual_dir))
    found = {}
    for split, names in spec.split_files().items():
        for name in names:
            hit = next((d / name for d in dirs if (d / name).is_file()), None)
            if hit is not None:
                found[split] = hit
                break
    return found


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end), streamed; UTF-8 (a leading BOM dropped)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{_where(path, n)}: not UTF-8 ({e.reason})") from None
            if n == 1:
                line = line.removeprefix("\ufeff")  # MRPC's files start with a byte-order mark
            yield n, line.rstrip("\r\n")


def _tsv_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, tab-separated fields) of the non-empty lines."""
    for n, line in _lines(path):
        if line:  # only empty lines are skipped: "\t" is a row of two empty fields
            yield n, line.split("\t")


def _parse_label(task: GlueTask, raw: str, where: str) -> int | float:
    if task.label_names is None:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataError(f"{where}: score {raw!r} is not a finite number")
        return value
    if raw in task.label_names:
        return task.label_names.index(raw)
    if raw.isdigit() and int(raw) < len(task.label_names):  # files may write class indices
        return int(raw)
    raise DataError(
        f"{where}: label {raw!r} is not one of {', '.join(task.label_names)} "
        f"or 0..{len(task.label_names) - 1}"
    )


def read_glue_tsv(task: str, path: str | os.PathLike[str], split: str) -> Iterator[dict]:
    """Records ``{"idx", "text_a", "text_b", "label"}`` of one GLUE TSV file.

    ``split`` selects the layout: train/validation files must have labels; test files are
    read unlabeled (-1) unless their header has the label column.
    """
    spec, path = _task(task), Path(path)
    is_test = split.startswith("test")
    rows = _tsv_lines(path)
    if spec.name == "cola" and not is_test:
        columns = dict(_COLA_COLUMNS)
    else:
        header_line, header = next(rows, (1, []))
        columns = {name: i for i, name in enumerate(header)}
        wanted = [spec.text_a] + ([spec.text_b] if spec.text_b else [])
        if not is_test:
            wanted.append(spec.label)
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise DataError(
                f"{_where(path, header_line)}: header lacks column(s) {missing} "
                f"(has {header}); is this a {spec.name} {split} file?"
            )
    labelled = spec.label in columns
    text_a, label = columns[spec.text_a], columns.get(spec.label)
    text_b = columns[spec.text_b] if spec.text_b else None
    needed = 1 + max(i for i in (text_a, text_b, label) if i is not None)
    unlabeled: int | float = -1 if spec.label_names else -1.0
    idx = -1
    for idx, (n, fields) in enumerate(rows):
        if len(fields) < needed:
            raise DataError(
                f"{_where(path, n)}: {len(fields)} tab-separated field(s), expected at least "
                f"{needed} (missing columns)"
            )
        yield {
            "idx": idx,
            "text_a": fields[text_a],
            "text_b": fields[text_b] if text_b is not None else "",
            "label": (
                _parse_label(spec, fields[label], _where(path, n))
                if labelled and label is not None
                else unlabeled
            ),
        }
    if idx < 0:  # An empty split would train on nothing or divide by zero later.
        raise DataError(f"{path}: no examples (the file holds at most a header line)")


def _fingerprint(files: dict[str, Path]) -> dict[str, list]:
    """What identifies the source files: path, size, mtime (a change triggers a rebuild)."""
    out = {}
    for split, f in sorted(files.items()):
        st = f.stat()
        out[split] = [str(f.resolve()), st.st_size, st.st_mtime_ns]
    return out


@dataclasses.dataclass(eq=False)
class LocalGlueConfig(tfds.core.BuilderConfig):
    """Config of :class:`LocalGlue`; ``name`` is the GLUE task (a key of :data:`GLUE_TASKS`)."""


class LocalGlue(tfds.core.GeneratorBasedBuilder):
    """A GLUE task from local TSV files in ``manual_dir`` (module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}  # noqa: RUF012 (TFDS class attribute)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the task's GLUE TSV files (train.tsv, dev.tsv, test.tsv) in manual_dir."
    )
    BUILDER_CONFIGS = [LocalGlueConfig(name=t) for t in GLUE_TASKS]  # noqa: RUF012

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. TFDS' default probes ``importlib_resources`` (not installed here)."""
        return epath.Path(__file__)

    @property
    def task(self) -> GlueTask:
        return _task(self.builder_config.name)

    def _info(self) -> tfds.core.DatasetInfo:
        task = self.task
        label = (
            tfds.features.Scalar(dtype=np.float32)
            if task.is_regression
            else tfds.features.ClassLabel(names=list(task.label_names or ()))
        )
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "idx": tfds.features.Scalar(dtype=np.int32),
                    "text_a": tfds.features.Text(),
                    "text_b": tfds.features.Text(),
                    "label": label,
                }
            ),
            supervised_keys=None,
            # File order: record i is row i (idx == i); shuffling is the input pipeline's job.
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        files = glue_files(self.task.name, Path(dl_manager.manual_dir))
        if not files:
            raise FileNotFoundError(
                f"no {self.task.name} TSV files ({self.MANUAL_DOWNLOAD_INSTRUCTIONS}) in "
                f"{dl_manager.manual_dir}"
            )
        self.info.metadata["source_files"] = _fingerprint(files)
        return {split: self._generate_examples(f, split) for split, f in files.items()}

    def _generate_examples(self, path: Path, split: str) -> Iterator[tuple[int, dict]]:
        # Errors surface here, inside TFDS' incomplete.* temp dir: a failed preparation
        # leaves nothing behind that a rerun would take for prepared data.
        for record in read_glue_tsv(self.task.name, path, split):
            yield record["idx"], record


class _Records(Sequence):
    """A random-access source whose records are normalised to plain Python values."""

    def __init__(self, source: Any, text_keys: tuple[str, ...], is_regression: bool) -> None:
        self._source = source
        self._text_keys = text_keys  # (text_a key, text_b key or absent)
        self._float = is_regression

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} examples")
        r = self._source[i % n]
        texts = [_text(r[k]) for k in self._text_keys] + ["", ""]
        label = r["label"]
        return {
            "idx": int(r["idx"]),
            "text_a": texts[0],
            "text_b": texts[1],
            "label": float(label) if self._float else int(label),
        }


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


@dataclasses.dataclass
class GlueSplit:
    """One split of a GLUE task.

    Attributes:
        examples: random-access sequence of ``{"idx": int, "text_a": str, "text_b": str,
            "label": int | float}`` (``label`` -1 when unlabeled); ``list(examples)`` copies.
        label_names: class names in label-index order; None for regression (stsb).
        task: the task name; split: the split name.
    """

    examples: Sequence[dict]
    label_names: tuple[str, ...] | None
    task: str
    split: str

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """Number of classes; 1 for regression (one output, as in transformers)."""
        return 1 if self.label_names is None else len(self.label_names)

    def __len__(self) -> int:
        return len(self.examples)


def _glue_splits(task: GlueTask) -> tuple[str, ...]:
    return tuple(task.split_files())


def load_glue(
    task: str,
    split: str,
    *,
    manual_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> GlueSplit:
    """One split of a GLUE task: from local TSV files (``manual_dir``) or the TFDS catalogue.

    Args:
        task: ``cola``, ``sst2``, ``mrpc``, ``qqp``, ``stsb``, ``mnli``, ``qnli``, ``rte``,
            ``wnli`` or ``ax``.
        split: ``train``, ``validation``, ``test`` (MNLI: ``validation_matched``,
            ``validation_mismatched``, ``test_matched``, ``test_mismatched``).
        manual_dir: folder of the task's GLUE TSV files (or the GLUE root); prepared with
            :class:`LocalGlue` as array_record under ``data_dir`` (once; rebuilt when the
            files change). Without it, ``glue/<task>`` of the TFDS catalogue is loaded
            (downloaded when absent from ``data_dir``: needs network).
        data_dir: TFDS data dir (default: TFDS', ``~/tensorflow_datasets``).

    Raises:
        DataError: bad task/split, malformed TSV (file and line named), or an unavailable
            catalogue dataset.
    """
    spec = _task(task)
    if split not in _glue_splits(spec):
        raise DataError(
            f"GLUE {task} has no split {split!r}; splits: {', '.join(_glue_splits(spec))}"
        )
    data_dir = None if data_dir is None else os.fspath(data_dir)
    if manual_dir is not None:
        source = _local_source(spec, split, Path(manual_dir), data_dir)
        keys: tuple[str, ...] = ("text_a", "text_b")
    else:
        source = _catalogue_source(spec, split, data_dir)
        keys = spec.catalogue_text
    return GlueSplit(
        examples=_Records(source, keys, spec.is_regression),
        label_names=spec.label_names,
        task=spec.name,
        split=split,
    )


@contextlib.contextmanager
def _preparing(builder: tfds.core.DatasetBuilder) -> Iterator[None]:
    """Holds an exclusive lock on ``builder``'s config directory while its data is checked
    and prepared, and under it removes the ``incomplete.*`` directories there.

    TFDS prepares into ``incomplete.XXXXXX_VERSION/`` and renames it when done; any normal
    exit or exception removes it, so one found while we hold the lock was left by a killed
    preparation (kill -9, power loss) and would otherwise stay forever. The lock also makes a
    second preparation of the same data (two fine-tuning runs sharing ``tfds_data_dir``)
    wait for the first, instead of both writing it.
    """
    config_dir = Path(builder.data_dir).parent
    config_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(config_dir / ".albert_jax-prepare.lock",
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for stale in config_dir.glob(f"{tfds.core.constants.INCOMPLETE_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        os.close(fd)  # releases the lock


def _local_source(spec: GlueTask, split: str, manual_dir: Path, data_dir: str | None) -> Any:
    files = glue_files(spec.name, manual_dir)
    if split not in files:
        names = " or ".join(spec.split_files()[split])
        raise DataError(f"GLUE {spec.name} {split}: no {names} in {manual_dir} (or below it)")
    for name, path in files.items():  # A bad header or no example: one line, before TFDS.
        next(read_glue_tsv(spec.name, path, name), None)
    builder = LocalGlue(data_dir=data_dir, config=spec.name, file_format="array_record")
    with _preparing(builder):
        dl = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
        if builder.is_prepared():
            metadata = builder.info.metadata
            stored = metadata.get("source_files") if metadata else None
            if stored != _fingerprint(files):  # lists, as read back from metadata.json
                # Other or edited TSV files than the prepared ones: rebuild rather than
                # serve stale data.
                dl = tfds.download.DownloadConfig(
                    manual_dir=str(manual_dir),
                    download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS,
                )
        builder.download_and_prepare(download_config=dl)
    return builder.as_data_source(split=split)


def _catalogue_builder(task: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """TFDS' ``glue/<task>`` builder (data under ``data_dir/glue/<task>``, as the catalogue's)."""
    from tensorflow_datasets.text import glue as tfds_glue

    class Glue(tfds_glue.Glue, skip_registration=True):
        # TFDS' default code_path needs the importlib_resources backport under Python >= 3.9
        # (not a dependency); point it at the catalogue module, where its checksums live.
        name = "glue"

        @tfds_utils.classproperty
        @classmethod
        def code_path(cls) -> epath.Path:
            return epath.Path(tfds_glue.__file__)

    return Glue(config=task, data_dir=data_dir, file_format="array_record")


_GLUE_HOST = "https://dl.fbaipublicfiles.com"


def _check_reachable(url: str, timeout: float = 5.0) -> None:
    """Fail fast offline: TFDS' downloader retries 10 times with backoff (~3.5 minutes)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # the proxy, not us, reaches the host
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"cannot reach {host}: {e}") from None


def _catalogue_source(spec: GlueTask, split: str, data_dir: str | None) -> Any:
    try:
        builder = _catalogue_builder(spec.name, data_dir)
        with _preparing(builder):
            if not builder.is_prepared():
                _check_reachable(builder.builder_config.data_url or _GLUE_HOST)
            # No GCS mirror: reading it needs gcsfs/TensorFlow; the GLUE URLs are fetched
            # directly.
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            )
        return builder.as_data_source(split=split)
    except Exception as e:  # network, missing dependency, not prepared: all the same remedy
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise DataError(
            f"the TFDS catalogue dataset glue/{spec.name} could not be loaded ({reason}); "
            "pass manual_dir= with the task's local GLUE TSV files"
        ) from e


# --------------------------------------------------------------------------------------------
# CoNLL


@dataclasses.dataclass
class TokenSplit:
    """Sentences of a token-classification file.

    Attributes:
        sentences: ``[(tokens, tags), ...]``, ``tokens`` and ``tags`` lists of str of equal
            length.
        label_names: the tag set in label-index order.
    """

    sentences: list[tuple[list[str], list[str]]]
    label_names: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def label_ids(self, tags: Sequence[str]) -> list[int]:
        """Tags -> label indices (the tags were validated when read)."""
        index = {name: i for i, name in enumerate(self.label_names)}
        return [index[t] for t in tags]

    def __len__(self) -> int:
        return len(self.sentences)


def read_conll(
    path: str | os.PathLike[str],
    *,
    tag_column: int = -1,
    label_names: Sequence[str] | None = None,
) -> TokenSplit:
    """Sentences of a CoNLL-style file (module docstring).

    Args:
        tag_column: column of the tag (negative counts from the end; default the last).
        label_names: the tag set, in label-index order; a tag outside it is an error.
            Default: the tags seen, sorted, with ``"O"`` first (index 0) when present.
    """
    path = Path(path)
    if tag_column == 0:
        raise ValueError("tag_column 0 is the token column")
    known = None if label_names is None else set(label_names)
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    ncols = first = 0
    for n, fields in _conll_lines(path):
        if fields is None:  # blank line or end of file: the sentence ends
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        if fields[0] == "-DOCSTART-":
            continue
        if not ncols:
            ncols, first = len(fields), n
            need = max(2, tag_column + 1 if tag_column > 0 else -tag_column + 1)
            if ncols < need:
                raise DataError(
                    f"{_where(path, n)}: {ncols} column(s), expected at least {need} "
                    f"(token and tag, tag_column={tag_column})"
                )
        elif len(fields) != ncols:
            raise DataError(
                f"{_where(path, n)}: {len(fields)} column(s), expected {ncols} (as on line {first})"
            )
        tag = fields[tag_column]
        if known is not None and tag not in known:
            raise DataError(f"{_where(path, n)}: tag {tag!r} is not in label_names")
        tokens.append(fields[0])
        tags.append(tag)
    if label_names is None:
        seen = {t for _, ts in sentences for t in ts}
        names = sorted(seen - {"O"})
        label_names = (["O"] if "O" in seen else []) + names
    return TokenSplit(sentences=sentences, label_names=tuple(label_names))


def _conll_lines(path: Path) -> Iterator[tuple[int, list[str] | None]]:
    """(line number, whitespace-split fields or None for a blank line); a final None."""
    n = 0
    for n, line in _lines(path):
        yield n, (line.split() or None)
    yield n + 1, None


# --------------------------------------------------------------------------------------------
# Multiple choice


def read_multiple_choice(
    path: str | os.PathLike[str], *, num_choices: int | None = None
) -> list[dict]:
    """Examples ``{"id", "context", "question", "choices", "label"}`` of a JSON Lines file.

    See the module docstring for the accepted fields. ``label`` is -1 where the line has
    none. ``num_choices``: when given, every example must have exactly that many choices.
    """
    path = Path(path)
    out: list[dict] = []
    for n, line in _lines(path):
        if not line.strip():
            continue
        where = _where(path, n)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: malformed JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        for ex in _mc_examples(obj, where, f"{path.name}:{n}"):
            if num_choices is not None and len(ex["choices"]) != num_choices:
                raise DataError(f"{where}: {len(ex['choices'])} choices, expected {num_choices}")
            out.append(ex)
    return out


def _mc_examples(obj: dict, where: str, default_id: str) -> list[dict]:
    def need(key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in obj:
            raise DataError(f"{where}: missing field {key!r}")
        if not isinstance(obj[key], kind):
            raise DataError(f"{where}: field {key!r} has type {type(obj[key]).__name__}")
        return obj[key]

    ident = str(obj.get("id", default_id))
    if "questions" in obj:  # a RACE file: one article, several questions
        article = need("article", str)
        questions, options = need("questions", list), need("options", list)
        answers = obj.get("answers")
        if len(options) != len(questions) or (
            answers is not None and len(answers) != len(questions)
        ):
            raise DataError(f"{where}: questions, options and answers differ in length")
        return [
            _mc_example(
                f"{ident}-{k}",
                article,
                q,
                options[k],
                None if answers is None else answers[k],
                where,
            )
            for k, q in enumerate(questions)
        ]
    if "article" in obj or "options" in obj:  # RACE's names, one question
        return [
            _mc_example(
                ident,
                need("article", str),
                need("question", str),
                need("options", list),
                obj.get("answer"),
                where,
            )
        ]
    return [
        _mc_example(
            ident,
            need("context", str),
            need("question", str),
            need("choices", list),
            obj.get("label"),
            where,
        )
    ]


def _mc_example(
    ident: str, context: Any, question: Any, choices: list, label: Any, where: str
) -> dict:
    if not isinstance(question, str):
        raise DataError(f"{where}: question is not a string")
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: choices must be a non-empty list of strings")
    if label is None:
        index = -1
    elif isinstance(label, str) and len(label) == 1 and label.isalpha():  # RACE: "A".."D"
        index = ord(label.upper()) - ord("A")
    elif isinstance(label, int) and not isinstance(label, bool):
        index = label
    else:
        raise DataError(f"{where}: label {label!r} is neither an index nor a letter")
    if label is not None and not 0 <= index < len(choices):
        raise DataError(f"{where}: label {label!r} is out of range for {len(choices)} choices")
    return {
        "id": ident,
        "context": context,
        "question": question,
        "choices": list(choices),
        "label": index,
    }
