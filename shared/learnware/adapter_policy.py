"""What an adapter may be: the ``adapter_config.json`` policy and the tensor checks.

One policy for both sides: the market applies it to every upload (``server.checker``) and
the user to every learnware before it loads (``client.user``, ``client.run``), so a local
folder or a fake market's package meets the same rules as the market's own checks.

Read from JSON and safetensors *headers* only: nothing from the package is imported,
unpickled or run. A config is accepted only as plain LoRA (options that add non-LoRA
weights, rewrite base weights or name code are refused; unknown options pass only when
off; module names must be plain names, never regular expressions), and every tensor must
be a LoRA part of a real ``nn.Linear`` / ``nn.Embedding`` of the base model with the shape
the config's ``r`` implies.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import InvalidInput
from shared.learnware.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from shared.learnware.safetensors_header import TensorInfo, read_safetensors_header
from shared.models.refs import ModelRef

#: peft saves adapter tensors of a causal LM as ``base_model.model.<module path>.<part>``.
PEFT_PREFIX = "base_model.model."
#: The only tensor parts a LoRA adapter may hold; anything else (a full ``lm_head.weight``,
#: biases, ``modules_to_save`` copies) is refused, since it is not LoRA and not shape-checked.
LORA_PARTS = (
    "lora_A.weight",
    "lora_B.weight",
    "lora_embedding_A",
    "lora_embedding_B",
    "lora_magnitude_vector",
)
_TENSOR_NAME = re.compile(
    rf"^{re.escape(PEFT_PREFIX)}(?P<module>[A-Za-z0-9_.]+?)\."
    rf"(?P<part>{'|'.join(re.escape(p) for p in LORA_PARTS)})$"
)
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
MAX_RANK = 4096


@dataclass(frozen=True)
class AcceptedBase:
    """A base model the market accepts, and the module shapes adapters are checked against.

    ``name`` is what ``load_causal_lm`` takes (``tiny``, ``smollm2-135m`` or a folder);
    ``ref`` is what manifests must name. ``module_shapes`` maps each
    ``nn.Linear``'s path in the base model (``model.layers.3.self_attn.v_proj``, without
    peft's ``base_model.model.`` prefix) to its weight's ``(out_features, in_features)``;
    ``embedding_shapes`` maps each ``nn.Embedding`` to ``(embedding_dim, num_embeddings)``,
    so that LoRA's A is ``(r, second)`` and B is ``(first, r)`` for both.
    """

    name: str
    ref: ModelRef
    module_shapes: dict[str, tuple[int, int]]
    embedding_shapes: dict[str, tuple[int, int]]


def describe_model(name: str, ref: ModelRef, model: Any) -> AcceptedBase:
    """The module shapes of a loaded torch ``model`` (its ``nn.Linear``s and
    ``nn.Embedding``s) as the tensor checks want them; reads shapes only."""
    import torch

    linear: dict[str, tuple[int, int]] = {}
    embedding: dict[str, tuple[int, int]] = {}
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            linear[path] = (module.out_features, module.in_features)
        elif isinstance(module, torch.nn.Embedding):
            embedding[path] = (module.embedding_dim, module.num_embeddings)
    return AcceptedBase(name, ref, linear, embedding)


# ---------------------------------------------------------------- adapter_config.json policy

#: Keys whose value must be "off" (null, false, {} or []): each adds non-LoRA weights,
#: changes the base model, initialises from (rewrites) base weights, or names code to import.
_MUST_BE_OFF: dict[str, str] = {
    "auto_mapping": "names classes to import",
    "megatron_config": "imports Megatron code",
    "modules_to_save": "ships full module copies, not LoRA",
    "trainable_token_indices": "ships embedding rows, not LoRA",
    "target_parameters": "wraps raw parameters, not modules",
    "layer_replication": "changes the base model's layers",
    "rank_pattern": "per-module ranks are not accepted by this market",
    "lora_bias": "adds bias tensors",
    "loftq_config": "rewrites base weights",
    "eva_config": "data-driven init",
    "corda_config": "rewrites base weights",
    "lora_ga_config": "data-driven init",
    "kasa_config": "not plain LoRA",
    "monteclora_config": "not plain LoRA",
    "velora_config": "not plain LoRA",
    "arrow_config": "not plain LoRA",
    "alora_invocation_tokens": "activated LoRA is not accepted",
    "use_qalora": "quantisation-aware LoRA is not accepted",
    "use_bdlora": "not plain LoRA",
}
#: Keys with a fixed set of accepted values (type-exact: 1 is not True).
_ONE_OF: dict[str, tuple[object, ...]] = {
    "peft_type": ("LORA",),
    "task_type": ("CAUSAL_LM", None),
    "bias": ("none",),
    "init_lora_weights": (True, False, "gaussian"),
    "megatron_core": ("megatron.core", None),
}
_REQUIRED = ("peft_type", "r")


def _is_off(value: object) -> bool:
    return value is None or value is False or value == {} or value == []


def _is_one_of(value: object, options: tuple[object, ...]) -> bool:
    return any(type(value) is type(option) and value == option for option in options)


def _is_name(value: object) -> bool:
    return isinstance(value, str) and _PLAIN_NAME.fullmatch(value) is not None


def _is_names(value: object) -> bool:
    return isinstance(value, list) and all(_is_name(item) for item in value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_probability(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _is_rank(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_RANK


def _is_layers(value: object) -> bool:
    ints = isinstance(value, list) and all(isinstance(i, int) for i in value)
    return value is None or (isinstance(value, int) and not isinstance(value, bool)) or ints


def _is_patterns(value: object) -> bool:
    return isinstance(value, dict) and all(
        _is_name(k) and _is_number(v) for k, v in value.items()
    )


#: A module name or dotted path, nothing else. peft reads a *string* ``target_modules`` or
#: ``exclude_modules`` as a regular expression (``re.fullmatch`` over every module name) and
#: pastes ``layers_pattern`` and ``alpha_pattern`` keys into one, so a package could make
#: the smoke run backtrack for minutes ("(a+)+$"): no regular expression from a package.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.]+")
_NAMES = "a list of plain module names ([A-Za-z0-9_.]+; a string would be a regex)"


#: Keys that only describe or tune the LoRA maths, with the type each must have.
_TYPED: dict[str, tuple[str, Callable[[object], bool]]] = {
    "r": (f"an int in 1..{MAX_RANK}", _is_rank),
    "lora_alpha": ("a finite number", _is_number),
    "lora_dropout": ("a number in [0, 1]", _is_probability),
    "use_dora": ("a bool", lambda v: isinstance(v, bool)),
    "use_rslora": ("a bool", lambda v: isinstance(v, bool)),
    "fan_in_fan_out": ("a bool", lambda v: isinstance(v, bool)),
    "inference_mode": ("a bool", lambda v: isinstance(v, bool)),
    "ensure_weight_tying": ("a bool", lambda v: isinstance(v, bool)),
    "base_model_name_or_path": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "revision": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "peft_version": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "target_modules": (_NAMES, lambda v: v is None or _is_names(v)),
    "exclude_modules": (_NAMES, lambda v: v is None or _is_names(v)),
    "layers_pattern": (
        "a plain name or a list of them",
        lambda v: v is None or _is_name(v) or _is_names(v),
    ),
    "layers_to_transform": ("an int or list of ints", _is_layers),
    "alpha_pattern": ("an object of plain module names to numbers", _is_patterns),
    "qalora_group_size": ("an int", lambda v: isinstance(v, int) and not isinstance(v, bool)),
}


@dataclass(frozen=True)
class LoraSettings:
    """What the tensor checks need from the config; ``targets`` None: not a plain list."""

    r: int
    use_dora: bool
    targets: tuple[str, ...] | None


def check_config(path: Path) -> LoraSettings:
    """A plain peft LoRA config; unknown keys (newer peft) pass only when "off"."""
    config = _read_json_object(path)
    for key in _REQUIRED:
        if key not in config:
            raise InvalidInput(f"{ADAPTER_CONFIG}: {key!r} is missing")
    for key, value in sorted(config.items()):
        _check_config_key(key, value)
    targets = config.get("target_modules")
    listed = tuple(targets) if isinstance(targets, list) else None
    return LoraSettings(config["r"], bool(config.get("use_dora", False)), listed)


def _check_config_key(key: str, value: object) -> None:
    where = f"{ADAPTER_CONFIG}: {key}={json.dumps(value)[:80]}"
    if key in _MUST_BE_OFF:
        if not _is_off(value):
            raise InvalidInput(f"{where} refused ({_MUST_BE_OFF[key]})")
    elif key in _ONE_OF:
        if not _is_one_of(value, _ONE_OF[key]):
            accepted = ", ".join(json.dumps(v) for v in _ONE_OF[key])
            raise InvalidInput(f"{where} refused; accepted: {accepted}")
    elif key in _TYPED:
        expected, valid = _TYPED[key]
        if not valid(value):
            raise InvalidInput(f"{where} refused; must be {expected}")
    elif not _is_off(value):
        raise InvalidInput(f"{where}: unknown LoRA option refused (only accepted when off)")


def _read_json_object(path: Path) -> dict[str, Any]:
    def no_constant(name: str) -> Any:
        raise InvalidInput(f"{path.name}: JSON constant {name} is not allowed")

    try:
        value = json.loads(path.read_bytes().decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidInput(f"{path.name}: not valid UTF-8 JSON: {err}") from err
    except RecursionError:  # a hostile package nests thousands deep
        raise InvalidInput(f"{path.name}: JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{path.name}: must be a JSON object")
    return value


# ---------------------------------------------------------------- adapter tensors


def check_adapter(path: Path, config: LoraSettings, base: AcceptedBase) -> tuple[str, ...]:
    """Header only: every tensor a LoRA part of a real module, with the right shape."""
    tensors = read_safetensors_header(path)
    if not tensors:
        raise InvalidInput(f"{ADAPTER_WEIGHTS}: holds no tensors")
    parts: dict[str, set[str]] = {}
    for name, info in sorted(tensors.items()):
        module, part = _lora_part(name, config)
        _check_tensor(name, info, module, part, config, base)
        parts.setdefault(module, set()).add(part)
    for module, found in sorted(parts.items()):
        _check_complete(module, found)
    return tuple(sorted(parts))


def _lora_part(name: str, config: LoraSettings) -> tuple[str, str]:
    match = _TENSOR_NAME.match(name)
    if match is None:
        raise InvalidInput(
            f"{ADAPTER_WEIGHTS}: tensor {name!r} is not a LoRA tensor "
            f"(allowed: {PEFT_PREFIX}<module>.{{{', '.join(LORA_PARTS)}}})"
        )
    module, part = match["module"], match["part"]
    if part == "lora_magnitude_vector" and not config.use_dora:
        raise InvalidInput(f"{ADAPTER_WEIGHTS}: tensor {name!r} needs use_dora in the config")
    if config.targets is not None and not any(
        module == t or module.endswith("." + t) for t in config.targets
    ):
        raise InvalidInput(
            f"{ADAPTER_WEIGHTS}: tensor {name!r} is for module {module!r}, which is not in "
            f"target_modules {list(config.targets)} of {ADAPTER_CONFIG}"
        )
    return module, part


def _check_tensor(
    name: str, info: TensorInfo, module: str, part: str, config: LoraSettings, base: AcceptedBase
) -> None:
    if info.dtype not in FLOAT_DTYPES:
        raise InvalidInput(
            f"{ADAPTER_WEIGHTS}: tensor {name!r} has dtype {info.dtype}, "
            f"expected one of {sorted(FLOAT_DTYPES)}"
        )
    embedding = part.startswith("lora_embedding")  # DoRA magnitudes: Linear modules only
    shapes = base.embedding_shapes if embedding else base.module_shapes
    if module not in shapes:
        kind = "nn.Embedding" if embedding else "nn.Linear"
        raise InvalidInput(
            f"{ADAPTER_WEIGHTS}: tensor {name!r} targets {module!r}, "
            f"which is not an {kind} of base model {base.ref.model_id}"
        )
    out_features, in_features = shapes[module]
    r = config.r
    expected, meaning = {
        "lora_A.weight": ((r, in_features), "(r, in_features)"),
        "lora_B.weight": ((out_features, r), "(out_features, r)"),
        "lora_embedding_A": ((r, in_features), "(r, num_embeddings)"),
        "lora_embedding_B": ((out_features, r), "(embedding_dim, r)"),
        "lora_magnitude_vector": ((out_features,), "(out_features,)"),
    }[part]
    if info.shape != expected:
        raise InvalidInput(
            f"{ADAPTER_WEIGHTS}: tensor {name!r} has shape {list(info.shape)}, expected "
            f"{list(expected)} = {meaning} with r={r} from {ADAPTER_CONFIG} and "
            f"{module} of shape (out, in) = {(out_features, in_features)}"
        )


def _check_complete(module: str, found: set[str]) -> None:
    """LoRA needs both halves; a lone A or B (or magnitude) is a broken adapter."""
    linear = {"lora_A.weight", "lora_B.weight"}
    embedding = {"lora_embedding_A", "lora_embedding_B"}
    halves = found - {"lora_magnitude_vector"}
    if halves not in (linear, embedding):
        raise InvalidInput(
            f"{ADAPTER_WEIGHTS}: module {module!r} has LoRA parts {sorted(found)}; "
            f"expected both of {sorted(linear)} or of {sorted(embedding)}"
        )
