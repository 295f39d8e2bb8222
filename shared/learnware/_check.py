"""Small validators the manifest records share; each raises ``InvalidInput`` quoting the value.

Kept apart from ``manifest.py`` so the records there read as a schema, not as plumbing.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from shared.canonical import canonical_json
from shared.errors import InvalidInput, LwmError

_SLUG = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SPDX_ID = r"[A-Za-z0-9][A-Za-z0-9.+-]*"
_SPDX = re.compile(rf"{_SPDX_ID}(?: (?:AND|OR|WITH) {_SPDX_ID})*")
_MAX_JSON_DEPTH = 16


def parse_json(data: bytes | str, where: str) -> Any:
    """Strict JSON: UTF-8 only, no duplicate keys, no NaN/Infinity."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidInput(f"{where} is not UTF-8: {err}") from err
    try:
        return json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise InvalidInput(f"{where} is not valid JSON: {err}") from err
    except RecursionError:  # "[[[[…" thousands deep: the parser gives up, the caller's fault
        raise InvalidInput(f"{where} is nested too deeply to parse") from None


def loads_untrusted(raw: bytes, where: str, error: type[LwmError] = InvalidInput) -> Any:
    """UTF-8 JSON from outside the process; any failure to parse it (bad bytes, bad JSON,
    nesting deep enough to exhaust the parser) is ``error`` naming ``where``."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{where}: not valid JSON: {err}") from err
    except RecursionError:  # "[[[[…" thousands deep
        raise error(f"{where}: JSON nested too deeply") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidInput(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise InvalidInput(f"JSON constant {name} is not allowed (numbers must be finite)")


def text(
    where: str, value: object, *, max_len: int, multiline: bool = False, empty: bool = False
) -> None:
    """A printable string without surrounding blanks (tabs/newlines only when multiline)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a string, got {value!r}")
    if not value and not empty:
        raise InvalidInput(f"{where} must not be empty")
    if len(value) > max_len:
        raise InvalidInput(f"{where} is longer than {max_len} characters: {value[:40]!r}...")
    if value != value.strip():
        raise InvalidInput(f"{where} has leading or trailing blanks: {value!r}")
    allowed = "\n\t" if multiline else ""
    if any(not ch.isprintable() and ch not in allowed for ch in value):
        raise InvalidInput(f"{where} contains control characters: {value[:40]!r}")


def slug(where: str, value: object) -> None:
    """1-64 chars of ``a-z 0-9 . _ -``, starting with a letter or digit (exact filters)."""
    if not isinstance(value, str) or not _SLUG.fullmatch(value):
        raise InvalidInput(
            f"{where} must be 1-64 chars of a-z, 0-9, '.', '_', '-' starting with a letter "
            f"or digit, got {value!r}"
        )


def spdx(where: str, value: object) -> None:
    """An SPDX license id or a flat expression of ids joined by AND/OR/WITH; each licence
    id (not an exception after WITH) must be on the SPDX list ``spdx`` ships, or a
    ``LicenseRef-`` of the contributor's own."""
    if not isinstance(value, str) or len(value) > 128 or not _SPDX.fullmatch(value):
        raise InvalidInput(f"{where} must be an SPDX license id such as 'MIT', got {value!r}")
    words = value.split(" ")
    licences = [w for i, w in enumerate(words) if i % 2 == 0 and (i == 0 or words[i - 1] != "WITH")]
    unknown = [w for w in licences if not _known_licence(w)]
    if unknown:
        raise InvalidInput(
            f"{where}: {unknown[0]!r} is not an SPDX license id (see https://spdx.org/licenses/; "
            "your own terms: LicenseRef-NAME)"
        )


def _known_licence(word: str) -> bool:
    """On the list, case-insensitively (as SPDX matches ids), also in its newer ``-only`` /
    ``-or-later`` / ``+`` forms, which the list of ``spdx`` 2.5.1 predates."""
    if word.startswith("LicenseRef-"):
        return True
    base = word.lower().removesuffix("+").removesuffix("-only").removesuffix("-or-later")
    return base in _spdx_ids()


@functools.lru_cache(maxsize=1)
def _spdx_ids() -> frozenset[str]:
    """The SPDX licence ids (lower case) of the ``spdx`` package the demo corpora install."""
    from shared.data.sources import package_dir

    folder = package_dir("spdx", "spdx==2.5.1") / "data"
    return frozenset(f.stem.removeprefix("deprecated_").lower() for f in folder.glob("*.txt"))


def hex_string(where: str, value: object, *, length: int) -> None:
    if (
        not isinstance(value, str)
        or len(value) != length
        or any(ch not in "0123456789abcdef" for ch in value)
    ):
        raise InvalidInput(f"{where} must be {length} lowercase hex chars, got {value!r}")


def sha256(where: str, value: object) -> None:
    hex_string(where, value, length=64)


def integer(where: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{where} must be an integer >= {minimum}, got {value!r}")


def instance(where: str, value: object, cls: type) -> None:
    if not isinstance(value, cls):
        raise InvalidInput(f"{where} must be a {cls.__name__}, got {value!r}")


def timestamp(where: str, value: object) -> None:
    """ISO 8601 with a UTC offset (naive times are ambiguous across machines)."""
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidInput(
            f"{where} must be ISO 8601 with a UTC offset like "
            f"'2026-11-27T09:46:00+00:00', got {value!r}"
        )


def _number(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where} must be a number, got {value!r}")
    return float(value)


def privacy(record: Any, where: str) -> None:
    """Normalise and check ``record.epsilon`` (finite > 0 or None) and ``record.delta``.

    ``delta`` lies in [0, 1); without DP (epsilon None) it must be 0, since a delta alone
    promises nothing and would mislead a reader of the report.
    """
    epsilon = record.epsilon
    if epsilon is not None:
        epsilon = _number(f"{where} epsilon", epsilon)
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise InvalidInput(f"{where} epsilon must be finite and > 0 (or null), got {epsilon}")
    delta = _number(f"{where} delta", record.delta)
    if not (0.0 <= delta < 1.0):
        raise InvalidInput(f"{where} delta must lie in [0, 1), got {delta}")
    if epsilon is None and delta != 0.0:
        raise InvalidInput(f"{where} has no epsilon (no DP), so delta must be 0, got {delta}")
    object.__setattr__(record, "epsilon", epsilon)
    object.__setattr__(record, "delta", delta)


def records(where: str, value: object, cls: type) -> tuple[Any, ...]:
    """A tuple of ``cls`` instances (lists are accepted and converted)."""
    if not isinstance(value, tuple | list):
        raise InvalidInput(f"{where} must be a tuple of {cls.__name__}, got {value!r}")
    for i, item in enumerate(value):
        instance(f"{where}[{i}]", item, cls)
    return tuple(value)


def json_object(where: str, value: object) -> dict[str, Any]:
    """A JSON-safe deep copy of a mapping (str keys, finite numbers), so records stay frozen."""
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{where} must be a JSON object (dict), got {value!r}")
    _json_value(where, value, 0)
    copied: dict[str, Any] = json.loads(canonical_json(value))
    return copied


def _json_value(where: str, value: object, depth: int) -> None:
    if depth > _MAX_JSON_DEPTH:
        raise InvalidInput(f"{where} is nested deeper than {_MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{where} holds a non-finite number {value!r}")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _json_value(f"{where}[{i}]", item, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput(f"{where} has a non-string key {key!r}")
            _json_value(f"{where}.{key}", item, depth + 1)
        return
    raise InvalidInput(f"{where} holds a non-JSON value of type {type(value).__name__}")
