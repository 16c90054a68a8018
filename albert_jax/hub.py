"""Finding model files: local paths as they are, hub names through huggingface_hub's cache.

A name is first looked up in the local Hugging Face cache, and only then (unless offline
mode is on) on the hub. Bare names of the original checkpoints (``albert-base-v2``) are
tried as the canonical ``albert/albert-base-v2`` repository and as the legacy bare id, so a
cache filled under either spelling is found.

huggingface_hub reads ``HF_HUB_OFFLINE``, ``HF_HOME`` and ``HF_HUB_CACHE`` once, when it is
imported. This module reads them again at every call (falling back to huggingface_hub's
values), so setting them later in a running process, as notebooks and tests do, still
takes effect.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Any

# Weight files in order of preference: safetensors needs no torch and cannot run code.
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ALBERT_JAX_META = "albert_jax.json"
ALBERT_JAX_PARAMS = "params.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "spiece.model"
# Tokenizer files copied along when converting (spiece.model is the one that matters).
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json")
# Google's TF releases: their config, and their SentencePiece model names (30k-clean.model).
TF_CONFIG_FILE = "albert_config.json"
TF_TOKENIZER_FILES = ("30k-clean.model", TOKENIZER_FILE)

# Models shipped inside the package (package data), resolved before any cache or network.
PACKAGED_MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
PACKAGED_MODELS = ("albert-mini",)


def packaged_model_dir(name: str) -> str | None:
    """The directory of a model shipped with albert_jax (``albert-mini``), else None."""
    if name in PACKAGED_MODELS:
        path = os.path.join(PACKAGED_MODELS_DIR, name)
        if os.path.isfile(os.path.join(path, CONFIG_FILE)):
            return path
    return None

_TRUE = {"1", "ON", "YES", "TRUE"}


class ModelNotFoundError(OSError):
    """A model that is neither a local path, nor cached, nor downloadable right now."""


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """The files of one checkpoint, resolved to local paths.

    ``format`` is ``"albert_jax"`` (``weights`` is ``params.safetensors``) or ``"hf"``
    (``model.safetensors``, ``pytorch_model.bin`` or the shards of either).
    ``tokenizer`` is the ``spiece.model`` path, or None when the checkpoint has none.
    """

    name: str
    config: str
    weights: tuple[str, ...]
    format: str
    tokenizer: str | None = None
    meta: str | None = None

    @property
    def directory(self) -> str:
        return os.path.dirname(self.config)


# ---------------------------------------------------------------------------- environment
def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is on, now or at import."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if env is not None:
        return env.strip().upper() in _TRUE
    return bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> str:
    """The hub cache directory, with huggingface_hub's precedence of variables.

    ``HF_HUB_CACHE`` > ``HUGGINGFACE_HUB_CACHE`` > ``$HF_HOME/hub`` > huggingface_hub's
    default (which already honoured ``XDG_CACHE_HOME`` at import).
    """
    from huggingface_hub import constants

    def expand(path: str) -> str:
        return os.path.expandvars(os.path.expanduser(path))

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return expand(os.environ[var])
    if os.environ.get("HF_HOME"):
        return os.path.join(expand(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def endpoint() -> str:
    """The hub URL: ``HF_ENDPOINT`` now, else huggingface_hub's (read at its import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                    "all_proxy")
_PROBE_TTL_S = 60.0
_probe_cache: dict[str, tuple[float, str | None]] = {}


def unreachable_reason() -> str | None:
    """Why the hub surely cannot be reached (a quick DNS + TCP check), or None.

    huggingface_hub retries an unreachable host five times with backoff (about 25 s per
    file) before giving up; this check fails within seconds. Skipped behind a proxy, which
    only the proxy can judge. Remembered for a minute.
    """
    import socket
    import time
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return None
    url = urlparse(endpoint())
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    key = f"{host}:{port}"
    cached = _probe_cache.get(key)
    if cached is not None and time.monotonic() - cached[0] < _PROBE_TTL_S:
        return cached[1]
    try:
        with socket.create_connection((host, port), timeout=5):
            reason = None
    except OSError as e:
        reason = f"{key}: {e.strerror or e}"
    _probe_cache[key] = (time.monotonic(), reason)
    return reason


# ---------------------------------------------------------------------------- names
def _looks_local(name: str) -> bool:
    """A path the user meant as a path (not a hub id), whether or not it exists."""
    return (
        name.startswith((".", "/", "~", "\\"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def repo_candidates(name: str) -> list[str]:
    """Hub repository ids to try for ``name``, canonical first.

    ``albert-base-v2`` -> ``albert/albert-base-v2``, ``albert-base-v2`` (legacy bare id);
    ``albert/albert-base-v2`` -> the same two; ``someone/model`` -> itself.
    Raises :class:`ModelNotFoundError` if ``name`` is not a valid repository id.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if _looks_local(name):
        raise ModelNotFoundError(f"{name}: no such file or directory")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelNotFoundError(
            f"{name}: no such file or directory, and not a valid hub model id"
        ) from None
    if "/" not in name:
        return [f"albert/{name}", name]
    if name.startswith("albert/"):
        return [name, name.removeprefix("albert/")]
    return [name]


def _not_found(name: str, filenames: tuple[str, ...], reason: str) -> ModelNotFoundError:
    """The one-line error for a hub model that is neither cached nor downloadable."""
    if filenames == (CONFIG_FILE,):
        what = f"model {name!r}"
    elif filenames == HF_WEIGHT_FILES:
        what = f"the weights of model {name!r}"
    else:
        what = f"{' or '.join(filenames)} of model {name!r}"
    return ModelNotFoundError(
        f"{what} is not in the local Hugging Face cache at {cache_dir()} and {reason}; "
        f"download it while online (e.g. `hf download {repo_candidates(name)[0]}`) or pass "
        "a local directory"
    )


# ---------------------------------------------------------------------------- hub lookups
def _cached(repo_id: str, filename: str) -> str | None:
    """The cached path of ``filename`` in ``repo_id`` (main), or None; never networks."""
    path = _cache_lookup(repo_id, filename)
    return path if isinstance(path, str) else None


def _cache_lookup(repo_id: str, filename: str) -> Any:
    """A path, None (not cached) or huggingface_hub's marker of a file known to be absent."""
    from huggingface_hub import try_to_load_from_cache

    return try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir())


def _download(repo_id: str, filename: str) -> str | None:
    """Downloads ``filename``; None if the repository does not exist or lacks the file.

    Raises :class:`ConnectionError` when the hub cannot be reached.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return hf_hub_download(repo_id, filename, cache_dir=cache_dir(), endpoint=endpoint())
    # LocalEntryNotFoundError subclasses EntryNotFoundError: it means "no network and not
    # cached", not "no such file", so it must be caught first.
    except LocalEntryNotFoundError as e:
        raise ConnectionError(str(e)) from e
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
        # RepositoryNotFoundError covers gated/private repositories without a token too.
        return None


def _find(
    name: str, filenames: tuple[str, ...], repos: list[str], *, optional: bool = False
) -> tuple[str, str] | None:
    """(repo_id, path) of the first of ``filenames`` found in the first repository.

    The whole cache is searched before the network is touched, so a cached model never
    costs a request. Returns None when every repository answered that it lacks the files.
    When the hub is needed but offline mode is on or it cannot be reached, raises
    :class:`ModelNotFoundError`, or returns None if the file is ``optional``.
    """
    absent = set()  # Files an earlier request found missing (huggingface_hub's .no_exist).
    for repo in repos:
        for filename in filenames:
            path = _cache_lookup(repo, filename)
            if isinstance(path, str):
                return repo, path
            if path is not None:
                absent.add((repo, filename))
    # An optional file the hub said it lacks is not asked for again (a required one is:
    # the repository may have gained it since).
    if optional and len(absent) == len(repos) * len(filenames):
        return None
    if is_offline():
        if optional:
            return None
        raise _not_found(name, filenames, "offline mode is on (HF_HUB_OFFLINE is set)")
    unreachable = unreachable_reason()
    if unreachable is not None:
        if optional:
            return None
        raise _not_found(name, filenames, f"the hub could not be reached ({unreachable})")
    for repo in repos:
        for filename in filenames:
            if optional and (repo, filename) in absent:
                continue
            try:
                path = _download(repo, filename)
            except ConnectionError:
                if optional:
                    return None
                raise _not_found(name, filenames, "the hub could not be reached") from None
            if path is not None:
                return repo, path
    return None


def _first_cached(repo: str, filenames: tuple[str, ...]) -> str | None:
    return next((p for p in (_cached(repo, f) for f in filenames) if p is not None), None)


# ---------------------------------------------------------------------------- public API
def resolve_file(name_or_path: str | os.PathLike, filename: str) -> str:
    """A local path to ``filename`` of a model.

    A directory yields ``<dir>/<filename>``; a file yields itself when its name is
    ``filename`` and its sibling ``filename`` otherwise (so a weights file path finds its
    ``config.json``). A hub name is resolved through the cache, then the hub.
    Raises :class:`ModelNotFoundError` (an ``OSError``) when the file cannot be found.
    """
    name = os.fspath(name_or_path)
    name = packaged_model_dir(name) or name
    if os.path.exists(name):
        directory = name if os.path.isdir(name) else os.path.dirname(name)
        if os.path.isfile(name) and os.path.basename(name) == filename:
            return name
        path = os.path.join(directory, filename)
        if not os.path.isfile(path):
            raise ModelNotFoundError(f"{path}: no such file")
        return path
    found = _find(name, (filename,), repo_candidates(name))
    if found is None:
        raise ModelNotFoundError(f"model {name!r} on the hub has no file {filename!r}")
    return found[1]


def resolve_model_files(name_or_path: str | os.PathLike) -> ModelFiles:
    """Config, weights and tokenizer of a local directory, a weights file or a hub name.

    Recognised formats: albert_jax (``albert_jax.json`` + ``params.safetensors``) and
    Hugging Face (``model.safetensors``, else ``pytorch_model.bin``, or their sharded
    ``.index.json`` forms).
    """
    name = os.fspath(name_or_path)
    name = packaged_model_dir(name) or name
    if is_tf_checkpoint(name):
        return resolve_tf_files(name)
    if os.path.exists(name):
        return _local_files(name)

    repos = repo_candidates(name)
    found = _find(name, (CONFIG_FILE,), repos)
    if found is None:
        raise ModelNotFoundError(f"model {name!r} was not found on the hub")
    repo, config = found
    # Every further file comes from the repository that held config.json. The format is
    # decided from the cache when it can be, so a cached model needs no request.
    meta = _cached(repo, ALBERT_JAX_META)
    if meta is None and _first_cached(repo, HF_WEIGHT_FILES) is None:
        found_meta = _find(name, (ALBERT_JAX_META,), [repo], optional=True)
        meta = None if found_meta is None else found_meta[1]
    names = (ALBERT_JAX_PARAMS,) if meta is not None else HF_WEIGHT_FILES
    found = _find(name, names, [repo])
    if found is None:
        raise ModelNotFoundError(
            f"model {name!r} ({repo}) has no weights file (looked for {', '.join(names)})"
        )
    weights = [found[1]]
    if weights[0].endswith(".index.json"):
        weights = []
        for shard in _shard_names(found[1]):
            found_shard = _find(name, (shard,), [repo])
            if found_shard is None:
                raise ModelNotFoundError(f"model {name!r} ({repo}) lacks the shard {shard!r}")
            weights.append(found_shard[1])
    tokenizer = _find(name, (TOKENIZER_FILE,), [repo], optional=True)
    if tokenizer is not None:
        # Its settings (do_lower_case, ...) when the repository has them; lands beside it.
        _find(name, ("tokenizer_config.json",), [repo], optional=True)
    return ModelFiles(
        name=name,
        config=config,
        weights=tuple(weights),
        format="hf" if meta is None else "albert_jax",
        tokenizer=None if tokenizer is None else tokenizer[1],
        meta=meta,
    )


def resolve_model_dir(name_or_path: str | os.PathLike) -> str:
    """The local directory holding a model's ``config.json`` (downloading if needed)."""
    return resolve_model_files(name_or_path).directory


def is_cached(name_or_path: str | os.PathLike) -> bool:
    """Whether the model's config and weights are available without any network access.

    True for a local directory holding a checkpoint, or a hub name whose ``config.json``
    and weights are in the local cache. Never raises and never touches the network.
    """
    name = os.fspath(name_or_path)
    name = packaged_model_dir(name) or name
    if os.path.exists(name):
        try:
            _local_files(name)
        except (OSError, ValueError):
            return False
        return True
    try:
        repos = repo_candidates(name)
    except ModelNotFoundError:
        return False
    for repo in repos:
        if _cached(repo, CONFIG_FILE) is None:
            continue
        names = (ALBERT_JAX_PARAMS,) if _cached(repo, ALBERT_JAX_META) else HF_WEIGHT_FILES
        for filename in names:
            path = _cached(repo, filename)
            if path is None:
                continue
            if filename.endswith(".index.json"):
                try:
                    return all(_cached(repo, s) for s in _shard_names(path))
                except (OSError, ValueError):
                    return False
            return True
    return False


# ---------------------------------------------------------------------------- local files
def _local_files(path: str) -> ModelFiles:
    """ModelFiles of a local checkpoint directory, or of a weights file inside one."""
    if os.path.isdir(path):
        directory, weights_file = path, None
    else:
        directory, weights_file = os.path.dirname(path) or ".", path
    config = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config):
        raise ModelNotFoundError(f"{directory}: no {CONFIG_FILE} (not a model directory)")
    meta = os.path.join(directory, ALBERT_JAX_META)
    meta = meta if os.path.isfile(meta) else None
    if weights_file is not None:
        fmt = "albert_jax" if os.path.basename(weights_file) == ALBERT_JAX_PARAMS else "hf"
        weights = [weights_file]
    elif meta is not None and os.path.isfile(os.path.join(directory, ALBERT_JAX_PARAMS)):
        fmt, weights = "albert_jax", [os.path.join(directory, ALBERT_JAX_PARAMS)]
    else:
        fmt = "hf"
        present = [f for f in HF_WEIGHT_FILES if os.path.isfile(os.path.join(directory, f))]
        if not present:
            raise ModelNotFoundError(
                f"{directory}: no weights file (looked for "
                f"{', '.join((ALBERT_JAX_PARAMS, *HF_WEIGHT_FILES))})"
            )
        weights = [os.path.join(directory, present[0])]
    if weights[0].endswith(".index.json"):
        weights = [os.path.join(directory, s) for s in _shard_names(weights[0])]
        missing = [w for w in weights if not os.path.isfile(w)]
        if missing:
            raise ModelNotFoundError(f"missing checkpoint shards: {', '.join(missing)}")
    tokenizer = os.path.join(directory, TOKENIZER_FILE)
    return ModelFiles(
        name=path,
        config=config,
        weights=tuple(weights),
        format=fmt,
        tokenizer=tokenizer if os.path.isfile(tokenizer) else None,
        meta=meta if fmt == "albert_jax" else None,
    )


def _shard_names(index_path: str) -> list[str]:
    """The shard file names listed by a ``*.index.json`` weight map, in order.

    Raises :class:`~albert_jax.errors.ConversionError` naming the file and the field when
    the index is unreadable or malformed; a shard must be a plain file name in the index's
    own directory (never a path that reaches elsewhere).
    """
    import json

    from albert_jax.errors import ConversionError

    try:
        with open(index_path, "rb") as f:
            index = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise ConversionError(f"{index_path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:  # Not UTF-8, or not JSON.
        raise ConversionError(f"{index_path} is not valid JSON ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(
            f"{index_path}: no weight_map (an object mapping each tensor name to its shard "
            "file)")
    shards = set()
    for tensor, shard in weight_map.items():
        if (not isinstance(shard, str) or shard in ("", ".", "..")
                or os.path.basename(shard) != shard or "\\" in shard):
            raise ConversionError(
                f"{index_path}: weight_map[{tensor!r:.80}] must be a file name beside the "
                f"index, got {shard!r:.80}")
        shards.add(shard)
    return sorted(shards)


# ------------------------------------------------ Google TF checkpoints (format "tf")
def _prefix_of(path: str) -> str:
    """A checkpoint prefix from the prefix itself or any of its files."""
    for pattern in (r"\.index$", r"\.data-\d+-of-\d+$", r"\.meta$"):
        stripped = re.sub(pattern, "", path)
        if stripped != path:
            return stripped
    return path


def is_tf_checkpoint(name_or_path: str | os.PathLike) -> bool:
    """Whether a local path is a Google TF checkpoint (a directory without ``config.json``
    holding ``albert_config.json`` or a checkpoint; or a checkpoint prefix or file).
    Never raises."""
    path = os.fspath(name_or_path)
    try:
        if os.path.isdir(path):
            return not os.path.isfile(os.path.join(path, CONFIG_FILE)) and (
                os.path.isfile(os.path.join(path, TF_CONFIG_FILE))
                or bool(glob.glob(os.path.join(glob.escape(path), "*.index")))
                or os.path.isfile(os.path.join(path, "variables", "variables.index"))
            )
        return os.path.isfile(_prefix_of(path) + ".index")
    except (OSError, ValueError):
        return False


def _state_file_prefix(directory: str) -> str | None:
    """The checkpoint a ``checkpoint`` state file (TF's Saver writes one) names, if any."""
    state = os.path.join(directory, "checkpoint")
    try:
        with open(state, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    match = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text, re.MULTILINE)
    if match is None:
        return None
    prefix = os.path.join(directory, match.group(1))  # Relative to the directory, or absolute.
    return prefix if os.path.isfile(prefix + ".index") else None


def _find_prefix(directory: str) -> str:
    prefix = _state_file_prefix(directory)
    if prefix is not None:
        return prefix
    indexes = sorted(glob.glob(os.path.join(glob.escape(directory), "*.index")))
    if not indexes:
        hub_layout = os.path.join(directory, "variables", "variables")
        if os.path.isfile(hub_layout + ".index"):
            return hub_layout
        raise ModelNotFoundError(
            f"{directory}: no TensorFlow checkpoint (no *.index file)"
        )
    if len(indexes) > 1:
        names = ", ".join(os.path.basename(_prefix_of(p)) for p in indexes)
        raise ModelNotFoundError(
            f"{directory} holds several checkpoints ({names}) and no 'checkpoint' file "
            "naming one: pass the prefix of one, e.g. "
            f"{os.path.join(directory, os.path.basename(_prefix_of(indexes[-1])))}"
        )
    return _prefix_of(indexes[0])


def _first_file(directories: list[str], names: tuple[str, ...]) -> str | None:
    for directory in directories:
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
    return None


def resolve_tf_files(
    src: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    spiece: str | os.PathLike | None = None,
) -> ModelFiles:
    """The files of a Google checkpoint, as :class:`ModelFiles` of format
    ``"tf"`` (``weights``: the checkpoint prefix; ``config``: ``albert_config.json``;
    ``tokenizer``: the SentencePiece model, or None).

    ``src`` is a release directory or a checkpoint prefix (or one of its files);
    ``config`` and ``spiece`` default to the files beside the checkpoint. Raises
    :class:`ModelNotFoundError` naming what is missing.
    """
    path = os.fspath(src)
    if os.path.isdir(path):
        directory = path
        prefix = _find_prefix(directory)
    else:
        prefix = _prefix_of(path)
        if not os.path.isfile(prefix + ".index"):
            raise ModelNotFoundError(
                f"{path}: no TensorFlow checkpoint (no {os.path.basename(prefix)}.index)"
            )
        directory = os.path.dirname(prefix) or "."
    if not glob.glob(glob.escape(prefix) + ".data-*"):
        raise ModelNotFoundError(f"{prefix}.index has no data file ({prefix}.data-*)")
    # Beside the checkpoint; for the TF-Hub layout (variables/variables) in ../assets.
    near = [directory, os.path.dirname(os.path.dirname(prefix))]
    near += [os.path.join(d, "assets") for d in list(near)]
    near = list(dict.fromkeys(os.path.abspath(d) for d in near))
    if config is not None:
        config_path = os.fspath(config)
        if not os.path.isfile(config_path):
            raise ModelNotFoundError(f"{config_path}: no such file")
    else:
        config_path = _first_file(near, (TF_CONFIG_FILE, CONFIG_FILE))
        if config_path is None:
            raise ModelNotFoundError(
                f"{directory}: no {TF_CONFIG_FILE} beside the checkpoint; pass the "
                "model's config (albert-jax convert --config FILE)"
            )
    if spiece is not None:
        spiece_path: str | None = os.fspath(spiece)
        if not os.path.isfile(spiece_path):
            raise ModelNotFoundError(f"{spiece_path}: no such file")
    else:
        spiece_path = _first_file(near, TF_TOKENIZER_FILES)
    return ModelFiles(
        name=path, config=config_path, weights=(prefix,), format="tf", tokenizer=spiece_path,
    )
