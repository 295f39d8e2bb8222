"""Run a fetched learnware: load base model + adapter(s), then generate (``client.evaluate``
and ``client.harness`` score).

Split from ``client.user`` (search and verified fetch): loading is the first moment any
code touches the weights, and it happens only on a ``VerifiedLearnware``, one that
``fetch_learnware`` just checked or ``check_folder`` checked (a folder gets the market's
package checks and a pinned key); nothing is checked twice. The one check that needs the
base model, every adapter tensor against its module's shape (the market's
``check_adapter``), runs here, between loading the base model and loading the adapters.

Plain peft: a learnware's config names its base model by id (``tiny-llama-v1``,
``smollm2-135m-instruct-q4_1``), which only ``lwm`` resolves; ``write_peft_folder``
(``lwm fetch --peft-dir``) writes a folder ``AutoPeftModelForCausalLM`` loads as it is.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.market import Connection, MarketClient
from client.trust import TrustStore
from client.user import VerifiedLearnware, check_folder, check_id, fetch_learnware
from shared.errors import InvalidInput
from shared.files import building, check_writable
from shared.home import Home
from shared.learnware import Manifest
from shared.learnware.adapter_policy import (
    AcceptedBase,
    check_adapter,
    check_config,
    describe_model,
)
from shared.learnware.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from shared.models import LocalModel
from shared.models.device import CPU, Placement

#: peft's name for the one adapter ``PeftModel.from_pretrained`` loads when given none.
DEFAULT_ADAPTER = "default"
#: The base model's tokenizer files, copied into a plain-peft folder (those it has).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


@dataclass(frozen=True)
class LoadedLearnware:
    """Base model + adapter, ready to run: ``model`` is a ``PeftModel`` in eval mode.

    Learnwares loaded together by ``load_learnwares`` share one ``model`` holding every
    adapter; ``adapter`` names this one's, and ``active_model`` switches to it.
    """

    model: Any
    tokenizer: Any
    manifest: Manifest
    path: Path
    base_model: LocalModel
    adapter: str = DEFAULT_ADAPTER

    def active_model(self) -> Any:
        """The shared model with this learnware's adapter switched on."""
        self.model.set_adapter(self.adapter)
        return self.model


def load_learnware(
    source: str | Path | VerifiedLearnware,
    *,
    home: Home | None = None,
    base_model: str | Path | None = None,
    conn: Connection | MarketClient | None = None,
    revoked_keys: Collection[str] = (),
    trust: TrustStore | None = None,
    placement: Placement = CPU,
) -> LoadedLearnware:
    """Load a learnware folder, a learnware id (fetched and verified into the cache), or a
    ``VerifiedLearnware`` as is.

    A folder goes through ``check_folder`` (hashes, signature with a key pinned in ``trust``,
    adapter policy, base model) before anything is loaded. Only safetensors weights are
    ever read. ``trust`` None is the trust store in ``home``. The base model loads on
    ``placement`` (``shared.models.device.resolve``).
    """
    home = home or Home.resolve()
    trust = trust or TrustStore.at(home)
    verified = verified_source(source, home, base_model, conn, revoked_keys, trust)
    loaded = load_learnwares({DEFAULT_ADAPTER: verified}, home=home, placement=placement)
    return loaded[DEFAULT_ADAPTER]


def load_learnwares(
    learnwares: Mapping[str, VerifiedLearnware],
    *,
    home: Home | None = None,
    placement: Placement = CPU,
) -> dict[str, LoadedLearnware]:
    """Load the base model once with every learnware's adapter in it, each under its key.

    Switching learnware is then ``set_adapter`` rather than a reload (what scoring many
    learnwares on the same data wants). All must name the same base model weights.
    """
    if not learnwares:
        raise InvalidInput("no learnware to load")
    bases = {v.base_model.ref.sha256 for v in learnwares.values()}
    if len(bases) > 1:
        raise InvalidInput("learnwares loaded together must share one base model")
    from peft import PeftModel

    from shared.models import load_causal_lm

    names = list(learnwares)
    base = learnwares[names[0]].base_model
    loaded = load_causal_lm(base.name, home or Home.resolve(), placement)
    shapes = describe_model(base.name, base.ref, loaded.model)
    for verified in learnwares.values():
        _check_tensors(verified, shapes)
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        model = PeftModel.from_pretrained(
            loaded.model, str(learnwares[names[0]].path), adapter_name=names[0], is_trainable=False
        )
        for name in names[1:]:
            model.load_adapter(str(learnwares[name].path), adapter_name=name, is_trainable=False)
    model.eval()
    return {
        name: LoadedLearnware(model, loaded.tokenizer, v.manifest, v.path, v.base_model, name)
        for name, v in learnwares.items()
    }


def _check_tensors(verified: VerifiedLearnware, shapes: AcceptedBase) -> None:
    """The market's tensor policy: every tensor a LoRA part of a real module of this base
    model, shaped as the config's ``r`` says (safetensors header only)."""
    config = check_config(verified.path / ADAPTER_CONFIG)
    check_adapter(verified.path / ADAPTER_WEIGHTS, config, shapes)


def verified_source(
    source: str | Path | VerifiedLearnware,
    home: Home,
    base_model: str | Path | None,
    conn: Connection | MarketClient | None,
    revoked_keys: Collection[str],
    trust: TrustStore,
) -> VerifiedLearnware:
    """Check ``source`` exactly once: fetched now (checked by the fetch) or a folder."""
    if isinstance(source, VerifiedLearnware):
        return source
    folder = Path(source).expanduser()
    if not folder.is_dir():
        if conn is None:
            raise InvalidInput(f"{source} is not a learnware folder (pass --server to fetch an id)")
        folder = home.folder("learnwares") / check_id(str(source))
        if not folder.is_dir():
            return fetch_learnware(
                conn,
                str(source),
                folder,
                home=home,
                base_model=base_model,
                revoked_keys=revoked_keys,
                trust=trust,
            )
    return check_folder(
        folder, home=home, base_model=base_model, revoked_keys=revoked_keys, trust=trust
    )


def write_peft_folder(verified: VerifiedLearnware, out: Path, home: Home) -> Path:
    """A new folder ``out`` that plain ``AutoPeftModelForCausalLM.from_pretrained(out)``
    (and ``AutoTokenizer``) loads: the learnware's adapter weights, its config naming the
    local folder of the base model the check matched by sha256 (not the published id),
    and that base model's tokenizer files. The learnware folder stays as it was signed.

    Written beside ``out`` and renamed into place; ``AlreadyExists`` if ``out`` exists.
    """
    return write_adapter_folder(verified.path, verified.base_model, out, home)


def write_adapter_folder(adapter: Path, base_model: LocalModel, out: Path, home: Home) -> Path:
    """``write_peft_folder`` for any adapter folder on ``base_model`` (a learnware's, or one
    ``client.reuse`` merged here): its weights and config, the config naming the local
    folder of the base model, and the base model's tokenizer files."""
    from shared.models.causal import model_folder

    check_writable(out, parents=True)
    base = model_folder(base_model.name, home)
    config = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    with building(out, private=False) as tmp:
        shutil.copyfile(adapter / ADAPTER_WEIGHTS, tmp / ADAPTER_WEIGHTS)
        named = {**config, "base_model_name_or_path": str(base)}
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(named, indent=2), encoding="utf-8")
        for name in TOKENIZER_FILES:
            if (base / name).is_file():
                shutil.copyfile(base / name, tmp / name)
    return out


@dataclass(frozen=True)
class Sampling:
    """How ``generate`` picks each new token. Temperature 0 (the default) is greedy decoding,
    deterministic, and ignores the rest; above 0 it samples at that temperature from the
    smallest set of tokens holding ``top_p`` of the probability, cut to the ``top_k`` likeliest
    (None: no cut), seeded by ``seed`` (None: torch's global generator, so runs differ).

    Validates itself, so a bad value fails before any model is loaded.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise InvalidInput(f"--temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidInput(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise InvalidInput(f"--top-k must be >= 1 (leave it out for no cut), got {self.top_k}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidInput(f"--seed must be in [0, 2**63), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def options(self) -> dict[str, Any]:
        """``model.generate``'s keywords for this choice (top_k 0 is transformers' "no cut")."""
        if self.greedy:
            return {"do_sample": False}
        top_k = 0 if self.top_k is None else self.top_k
        chosen = {"temperature": self.temperature, "top_p": self.top_p, "top_k": top_k}
        return {"do_sample": True, **chosen}


@dataclass(frozen=True)
class Generation:
    """What ``generate`` produced: ``text`` (only the new text), ``prompt`` (the text the model
    read, decoded from its input ids: the chat template's wrapping included) and ``chat``
    (whether the chat template was applied)."""

    text: str
    prompt: str
    chat: bool


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template (Instruct models do; ``tiny`` does not)."""
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer: Any, prompt: str, chat: bool = True) -> tuple[list[int], bool]:
    """The ids the model reads for ``prompt``, and whether the chat template made them.

    With ``chat`` and a template, the prompt is one user turn followed by the template's
    assistant header (``add_generation_prompt``); the template writes its special tokens as
    text, so none are added again. Otherwise the prompt goes in as plain text.
    """
    templated = chat and has_chat_template(tokenizer)
    if templated:
        turn = [{"role": "user", "content": prompt}]
        prompt = tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    return list(ids), templated


def generate(
    learnware: LoadedLearnware,
    prompt: str,
    max_new_tokens: int = 32,
    *,
    sampling: Sampling | None = None,
    chat: bool = True,
) -> Generation:
    """Continue ``prompt`` (through the chat template when ``chat`` and the tokenizer has one)
    with up to ``max_new_tokens`` tokens; greedy and deterministic unless ``sampling`` says so.
    A prompt longer than the context loses its start."""
    import torch

    if max_new_tokens < 1:
        raise InvalidInput(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    sampling = sampling or Sampling()
    tokenizer = learnware.tokenizer
    model = learnware.active_model()
    context = int(getattr(model.config, "max_position_embeddings", 2048))
    ids, templated = prompt_ids(tokenizer, prompt, chat)
    keep = max(context - max_new_tokens, 1)
    ids = ids[-keep:] or [tokenizer.bos_token_id or tokenizer.eos_token_id]
    input_ids = torch.tensor([ids], device=model.device)
    seeded = sampling.seed is not None
    with torch.inference_mode(), torch.random.fork_rng(devices=[], enabled=seeded):
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=min(max_new_tokens, context - input_ids.shape[1]),
            pad_token_id=tokenizer.pad_token_id,
            **sampling.options(),
        )
    text = tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True)
    return Generation(str(text), str(tokenizer.decode(ids)), templated)
