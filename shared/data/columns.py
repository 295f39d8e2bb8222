"""Which columns of a user's table hold the text: the one place rows become ``Record``s.

Every format (JSONL, JSON, CSV, parquet, Arrow, ``save_to_disk``) arrives here as rows of
named columns, so plain text, prompt/response, prompt/completion, chat ``messages`` and
multiple-choice (question, ``choices``, answer) records become the same texts whichever file
they came from. ``DataSource`` is a path with the user's choices (``--split``,
``--text-column``, ``--prompt-column``, ``--response-column``; ``choices_column`` in a
simulation's ``SIM.toml``); every API that takes a data path takes one in its place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.data.records import Record
from shared.errors import DataError

RESPONSE_NAMES = ("response", "completion")  # prompt/completion is the TRL/OpenAI spelling
MESSAGES = "messages"
CHOICES = "choices"
# With a choices column, lm-eval's and MMLU's spellings of the question and the gold answer
# (an index into the choices, or the choice itself) are understood too.
CHOICE_PROMPT_NAMES = ("prompt", "question")
CHOICE_GOLD_NAMES = (*RESPONSE_NAMES, "answer", "gold", "label")


@dataclass(frozen=True)
class DataSource:
    """A data file or folder and the user's choices for it: which split of a ``DatasetDict``
    (None: ``train``), and the columns holding the text, prompt, response and a
    multiple-choice record's answer options (None: the usual names)."""

    path: Path
    split: str | None = None
    text_column: str | None = None
    prompt_column: str | None = None
    response_column: str | None = None
    choices_column: str | None = None


DataPath = str | Path | DataSource  # what every data-taking API accepts: bare, or with choices


@dataclass(frozen=True)
class ColumnMap:
    """The columns actually read from one table; None where the table has no such column."""

    text: str | None
    prompt: str | None
    response: str | None
    messages: str | None
    choices: str | None = None

    @classmethod
    def resolve(cls, columns: Iterable[str], options: DataSource, where: str) -> ColumnMap:
        """Named columns must exist; otherwise the usual names are used where present. A
        table with nothing to read is refused with the columns it has, so the user can name
        theirs with the options."""
        present = list(columns)
        found = ", ".join(sorted(present)) or "none"

        def pick(chosen: str | None, option: str, usual: Sequence[str]) -> str | None:
            if chosen is not None:
                if chosen not in present:
                    raise DataError(f"{where}: no column {chosen!r} ({option}; found: {found})")
                return chosen
            return next((name for name in usual if name in present), None)

        choices = pick(options.choices_column, "choices_column", (CHOICES,))
        mapping = cls(
            text=pick(options.text_column, "--text-column", ("text",)),
            prompt=pick(
                options.prompt_column,
                "--prompt-column",
                CHOICE_PROMPT_NAMES if choices else ("prompt",),
            ),
            response=pick(
                options.response_column,
                "--response-column",
                CHOICE_GOLD_NAMES if choices else RESPONSE_NAMES,
            ),
            messages=MESSAGES if MESSAGES in present else None,
            choices=choices,
        )
        if not (mapping.text or (mapping.prompt and mapping.response) or mapping.messages):
            raise DataError(
                f"{where}: needs 'text', 'prompt' and 'response' (or 'completion'), or "
                f"'messages' (found: {found}); name yours with --text-column, "
                "--prompt-column, --response-column"
            )
        return mapping

    @property
    def names(self) -> list[str]:
        """The columns read, so the others (images, ids, long metadata) are never decoded."""
        chosen = (self.text, self.prompt, self.response, self.messages, self.choices)
        return list(dict.fromkeys(name for name in chosen if name is not None))

    def record(self, row: Mapping[str, Any], where: str) -> Record | None:
        """The record of one row; None if every field is blank."""
        if self.choices is not None and row.get(self.choices) is not None:
            return self._multiple_choice(row, where)
        text = _field(row, self.text, where)
        prompt = _field(row, self.prompt, where)
        response = _field(row, self.response, where)
        if self.messages is not None and not (text or prompt or response):
            text, prompt, response = _from_messages(row.get(self.messages), where)
        if not (text or prompt or response):
            return None
        return Record(text=text, prompt=prompt, response=response)

    def _multiple_choice(self, row: Mapping[str, Any], where: str) -> Record:
        """A question, its answer options and the gold one (its index, or the option)."""
        value = row.get(str(self.choices))
        if not isinstance(value, list) or not all(isinstance(c, str) and c.strip() for c in value):
            raise DataError(
                f"{where}: {self.choices!r} must be a list of strings (a CSV cell holds no "
                f"list: use JSONL, JSON or parquet), got {type(value).__name__}"
            )
        options = tuple(c.strip() for c in value)
        if len(options) < 2 or len(set(options)) != len(options):
            raise DataError(f"{where}: {self.choices!r} must hold 2 or more distinct choices")
        gold = None if self.response is None else row.get(self.response)
        if isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < len(options):
            answer = options[gold]
        elif isinstance(gold, str) and gold.strip() in options:
            answer = gold.strip()
        else:
            raise DataError(
                f"{where}: the answer {gold!r} ({self.response!r}) is neither one of the "
                f"{len(options)} choices nor an index into them"
            )
        prompt = _field(row, self.prompt, where)
        if prompt is None:
            raise DataError(f"{where}: a multiple-choice record needs a question (a prompt)")
        return Record(prompt=prompt, response=answer, choices=options)


def _field(row: Mapping[str, Any], column: str | None, where: str) -> str | None:
    value = None if column is None else row.get(column)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: {column!r} must be a string, got {type(value).__name__}")
    return value.strip() or None


def _from_messages(value: Any, where: str) -> tuple[str | None, str | None, str | None]:
    """A chat as (text, prompt, response): when the last turn is the assistant's, it is the
    response and the turns before it (contents, one a line) the prompt; otherwise the whole
    chat is plain text. Roles are not written into the text, as for prompt/response pairs."""
    if value is None:
        return None, None, None
    if not isinstance(value, list) or not all(_is_turn(turn) for turn in value):
        raise DataError(f"{where}: 'messages' must be a list of {{role, content}} strings")
    turns = [(turn["role"], turn["content"].strip()) for turn in value if turn["content"].strip()]
    contents = [content for _, content in turns]
    if len(turns) > 1 and turns[-1][0] == "assistant":
        return None, "\n".join(contents[:-1]), contents[-1]
    return "\n".join(contents) or None, None, None


def _is_turn(turn: Any) -> bool:
    return (
        isinstance(turn, Mapping)
        and isinstance(turn.get("role"), str)
        and isinstance(turn.get("content"), str)
    )
