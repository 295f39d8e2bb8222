"""Score every learnware (and the bare base model) on every user's held-out records.

The paper's Random, Best-single and Oracle contenders need the whole user x learnware
matrix, not only the market's pick. Scoring goes through the user's own path: the fetched
learnwares are loaded with ``client.run.load_learnwares`` (the base model once, every
adapter in it under its contributor's name, so switching learnware is ``set_adapter``
rather than a reload) and scored with ``client.evaluate.evaluate``; the base model's score
is that call's ``with_base``. Each score is appended to ``evaluations.jsonl`` (flushed and
fsynced) as soon as it exists: an interrupted run loses at most the scores in flight, and a
truncated last line is ignored on the next read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from client.evaluate import Evaluation, evaluate, evaluate_model
from client.simulate.contenders import BASE_NAME
from client.simulate.data import UserData

if TYPE_CHECKING:
    from client.run import LoadedLearnware
    from client.user import VerifiedLearnware
    from shared.home import Home


@dataclass(frozen=True)
class Score:
    """What one model did on one user's records (``nll`` = log of the token perplexity)."""

    user: str
    model: str  # a contributor name, or "base"
    evaluation: Evaluation

    @property
    def nll(self) -> float:
        return math.log(self.evaluation.perplexity)


@dataclass(frozen=True)
class Scoring:
    """How every user is scored: the evaluator's options, part of every cache key.
    ``precision`` is resolved (float32 or bfloat16, ``shared.models.device``)."""

    max_labels: int
    max_words: int
    precision: str = "float32"

    def user_key(self, user: UserData) -> str:
        """The user's scored records (with a question's choices) and these options, so a
        changed setting rescores."""
        records = user.eval_records()
        blob = json.dumps(
            [[r.full_text, *r.choices] if r.choices else r.full_text for r in records]
        )
        digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
        options = f"{self.max_labels}:{self.max_words}"
        if self.precision != "float32":  # float32 keys stay as they were before bfloat16
            options += f":{self.precision}"
        return f"{user.name}:{digest}:{options}"


class ScoreCache:
    """``evaluations.jsonl``: one line per (user records, model weights) pair."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[tuple[str, str], Evaluation] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interrupt
                self.entries[(entry["user"], entry["model"])] = Evaluation(**entry["evaluation"])

    def get(self, user_key: str, model_key: str) -> Evaluation | None:
        return self.entries.get((user_key, model_key))

    def put(self, user_key: str, model_key: str, evaluation: Evaluation) -> None:
        entry = {"user": user_key, "model": model_key, "evaluation": evaluation.to_dict()}
        self.entries[(user_key, model_key)] = evaluation
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+") as handle:
            handle.write(self._separator(handle) + json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    @staticmethod
    def _separator(handle: IO[str]) -> str:
        """A newline first when an interrupted write left the last line unfinished."""
        end = handle.seek(0, os.SEEK_END)
        if end == 0:
            return ""
        handle.seek(end - 1)
        last = handle.read(1)
        handle.seek(end)
        return "" if last == "\n" else "\n"


class Learnwares:
    """The fetched learnwares, loaded together the first time a score is missing."""

    def __init__(self, verified: Mapping[str, VerifiedLearnware], home: Home) -> None:
        self.verified, self.home = verified, home
        self.loaded: dict[str, LoadedLearnware] = {}

    def __getitem__(self, name: str) -> LoadedLearnware:
        if not self.loaded:
            from client.run import load_learnwares

            self.loaded = load_learnwares(self.verified, home=self.home)
        return self.loaded[name]


def evaluate_all(
    users: Sequence[UserData],
    learnwares: Mapping[str, VerifiedLearnware],  # contributor -> its fetched learnware
    model_keys: Mapping[str, str],  # "base" and each contributor -> cache key of its weights
    scoring: Scoring,
    cache: ScoreCache,
    home: Home,
    progress: Callable[[], object] | None = None,
    loaded: Learnwares | None = None,
) -> list[Score]:
    """Every (user, model) score in ``model_keys`` order, from the cache where it is there.

    ``loaded``: the learnwares already loaded (else they are loaded when a score is missing).
    """
    loaded = loaded or Learnwares(learnwares, home)
    scores = []
    for user in users:
        user_key = scoring.user_key(user)
        found = {name: cache.get(user_key, key) for name, key in model_keys.items()}
        for name in [n for n in found if n != BASE_NAME]:
            if found[name] is not None and found[BASE_NAME] is not None:
                continue
            result = evaluate(
                loaded[name],
                user.eval_records(),
                with_base=found[BASE_NAME] is None,
                max_labels=scoring.max_labels,
                max_words=scoring.max_words,
                precision=scoring.precision,
            )
            for done, evaluation in ((name, result.learnware), (BASE_NAME, result.base)):
                if evaluation is not None and found[done] is None:
                    found[done] = evaluation
                    cache.put(user_key, model_keys[done], evaluation)
        for name, evaluation in found.items():
            assert evaluation is not None
            scores.append(Score(user.name, name, evaluation))
            if progress is not None:
                progress()
    return scores


def evaluate_merged(
    user: UserData,
    members: Sequence[str],
    model_key: str,
    loaded: Learnwares,
    scoring: Scoring,
    cache: ScoreCache,
) -> Evaluation:
    """The merge of ``members`` (contributors; ``client.reuse.merge_adapters``, equal
    weights) scored on the user's records, from the cache under ``model_key`` if there."""
    from client.reuse import merge_adapters

    user_key = scoring.user_key(user)
    found = cache.get(user_key, model_key)
    if found is not None:
        return found
    first = loaded[members[0]]
    merged = merge_adapters(first.model, members, [1.0 / len(members)] * len(members))
    first.model.set_adapter(merged)
    evaluation = evaluate_model(
        first.model,
        first.tokenizer,
        user.eval_records(),
        max_labels=scoring.max_labels,
        max_words=scoring.max_words,
        precision=scoring.precision,
    )
    cache.put(user_key, model_key, evaluation)
    return evaluation
