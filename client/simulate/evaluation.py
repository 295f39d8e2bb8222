"""Score every learnware (and the bare base model) on every user's held-out records.

The paper's Random, Best-single and Oracle contenders need the whole user x learnware
matrix, not only the market's pick. The base model is loaded once and every fetched adapter
is loaded into it under its own name, so switching learnware is ``set_adapter`` rather than a
reload. Each score is appended to ``evaluations.jsonl`` (flushed and fsynced) as soon as it
exists: an interrupted run loses at most the score in flight, and a truncated last line is
ignored on the next read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.evaluate import Evaluation, evaluate_model
from client.simulate.data import UserData

BASE = "base"


@dataclass(frozen=True)
class Score:
    """What one model did on one user's records (``nll`` = log of the token perplexity)."""

    user: str
    model: str  # a contributor name, or "base"
    evaluation: Evaluation

    @property
    def nll(self) -> float:
        import math

        return math.log(self.evaluation.perplexity)


def user_fingerprint(user: UserData) -> str:
    blob = json.dumps([r.full_text for r in user.eval_records()])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ScoreCache:
    """``evaluations.jsonl``: one line per (user records, model weights) pair."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interrupt
                self.entries[(entry["user"], entry["model"])] = entry["evaluation"]

    def get(self, user_key: str, model_key: str) -> Evaluation | None:
        raw = self.entries.get((user_key, model_key))
        return Evaluation(**raw) if raw is not None else None

    def put(self, user_key: str, model_key: str, evaluation: Evaluation) -> None:
        raw = evaluation.to_dict()
        entry = {"user": user_key, "model": model_key, "evaluation": raw}
        self.entries[(user_key, model_key)] = raw
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+") as handle:
            handle.write(self._separator(handle) + json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    @staticmethod
    def _separator(handle: Any) -> str:
        """A newline first when an interrupted write left the last line unfinished."""
        end = handle.seek(0, os.SEEK_END)
        if end == 0:
            return ""
        handle.seek(end - 1)
        last = handle.read(1)
        handle.seek(end)
        return "" if last == "\n" else "\n"


class AdapterBank:
    """One base model with every learnware's adapter loaded under its contributor's name."""

    def __init__(self, base_model: str, adapters: dict[str, Path], home: Any) -> None:
        import warnings

        from peft import PeftModel

        from shared.models import load_causal_lm

        loaded = load_causal_lm(base_model, home)
        self.tokenizer = loaded.tokenizer
        names = list(adapters)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            model = PeftModel.from_pretrained(
                loaded.model, str(adapters[names[0]]), adapter_name=names[0], is_trainable=False
            )
            for name in names[1:]:
                model.load_adapter(str(adapters[name]), adapter_name=name, is_trainable=False)
        self.model = model.eval()

    @contextmanager
    def using(self, name: str) -> Iterator[Any]:
        if name == BASE:
            with self.model.disable_adapter():
                yield self.model
        else:
            self.model.set_adapter(name)
            yield self.model


def evaluate_all(
    users: Sequence[UserData],
    models: dict[str, str],  # contributor (or "base") -> cache key of its weights
    bank_factory: Any,
    cache: ScoreCache,
    max_labels: int,
    progress: Any = None,
) -> list[Score]:
    """Every (user, model) score, from the cache where it is there; the bank loads lazily."""
    bank = None
    scores = []
    for user in users:
        user_key = f"{user.name}:{user_fingerprint(user)}:{max_labels}"
        for name, model_key in models.items():
            evaluation = cache.get(user_key, model_key)
            if evaluation is None:
                bank = bank or bank_factory()
                with bank.using(name) as model:
                    evaluation = evaluate_model(
                        model, bank.tokenizer, user.eval_records(), max_labels=max_labels
                    )
                cache.put(user_key, model_key, evaluation)
            scores.append(Score(user.name, name, evaluation))
            if progress is not None:
                progress()
    return scores
