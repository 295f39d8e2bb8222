"""Run a fetched learnware: load base model + adapter, generate, evaluate.

Split from ``client.user`` (search and verified fetch): loading is the first moment any
code touches the weights, and it happens only after ``fetch_learnware`` or a re-check of a
local folder's hashes and base model.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.evaluate import Evaluation
from client.market import Connection, MarketClient
from client.user import check_id, fetch_learnware, refuse_revoked, resolve_base_model
from shared.data import Dataset, Record
from shared.errors import (
    InvalidInput,
)
from shared.home import Home
from shared.learnware import Manifest, verify_package
from shared.models import LocalModel

# ---------------------------------------------------------------- run


@dataclass(frozen=True)
class LoadedLearnware:
    """Base model + adapter, ready to run: ``model`` is a ``PeftModel`` in eval mode."""

    model: Any
    tokenizer: Any
    manifest: Manifest
    path: Path
    base_model: LocalModel


def load_learnware(
    source: str | Path,
    *,
    home: Home | None = None,
    base_model: str | Path | None = None,
    conn: Connection | MarketClient | None = None,
    revoked_keys: Collection[str] = (),
) -> LoadedLearnware:
    """Load a learnware folder, or a learnware id (fetched and verified into the cache).

    A folder is taken as one ``fetch_learnware`` verified (its signature was checked then);
    its files are checked against the manifest's hashes again and its base model matched
    before anything is loaded. Only safetensors weights are ever read.
    """
    home = home or Home.resolve()
    folder = Path(source).expanduser()
    if not folder.is_dir():
        if conn is None:
            raise InvalidInput(f"{source} is not a learnware folder (pass --server to fetch an id)")
        folder = home.folder("learnwares") / check_id(str(source))
        if not folder.is_dir():
            fetch_learnware(
                conn,
                str(source),
                folder,
                home=home,
                base_model=base_model,
                revoked_keys=revoked_keys,
            )
    package = verify_package(folder, None)
    manifest = package.manifest
    refuse_revoked(manifest.contributor.key_id, revoked_keys)
    wanted = manifest.base_model
    base = resolve_base_model(wanted.model_id, wanted.sha256, home, base_model)
    from peft import PeftModel

    from shared.models import load_causal_lm

    loaded = load_causal_lm(base.name, home)
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        model = PeftModel.from_pretrained(loaded.model, str(folder), is_trainable=False)
    return LoadedLearnware(model.eval(), loaded.tokenizer, manifest, folder, base)


def generate(learnware: LoadedLearnware, prompt: str, max_new_tokens: int = 32) -> str:
    """Greedy continuation of ``prompt`` (only the new text), deterministic."""
    import torch

    if max_new_tokens < 1:
        raise InvalidInput(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tokenizer = learnware.tokenizer
    context = int(getattr(learnware.model.config, "max_position_embeddings", 2048))
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False, verbose=False)
    keep = max(context - max_new_tokens, 1)
    input_ids = ids["input_ids"][:, -keep:]
    if input_ids.shape[1] == 0:
        input_ids = torch.tensor([[tokenizer.bos_token_id or tokenizer.eos_token_id]])
    with torch.inference_mode():
        out = learnware.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=min(max_new_tokens, context - input_ids.shape[1]),
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return str(tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True))


@dataclass(frozen=True)
class LearnwareEvaluation:
    """The learnware's scores on the user's data and, when asked, the bare base model's."""

    learnware: Evaluation
    base: Evaluation | None = None


def evaluate(
    learnware: LoadedLearnware,
    data: str | Path | Dataset | Sequence[Record],
    *,
    with_base: bool = False,
    batch_size: int = 16,
    progress: bool = False,
) -> LearnwareEvaluation:
    """Perplexity (text) or accuracy (labelled data) of the learnware on ``data``, locally.

    ``with_base`` also scores the base model alone (the adapter switched off), the baseline
    a user compares against.
    """
    from client.evaluate import evaluate_model

    records = _records(data)
    model, tokenizer = learnware.model, learnware.tokenizer
    result = evaluate_model(model, tokenizer, records, batch_size=batch_size, progress=progress)
    if not with_base:
        return LearnwareEvaluation(result)
    with model.disable_adapter():
        base = evaluate_model(model, tokenizer, records, batch_size=batch_size, progress=progress)
    return LearnwareEvaluation(result, base)


def _records(data: str | Path | Dataset | Sequence[Record]) -> list[Record]:
    if isinstance(data, str | Path):
        from shared.data import load_dataset

        data = load_dataset(data)
    return list(data.records if isinstance(data, Dataset) else data)
