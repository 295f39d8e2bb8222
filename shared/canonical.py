"""Canonical JSON: one exact byte string for one JSON value, for whatever is hashed or signed.

Manifests are signed over these bytes and schema ids are hashes of them, so both sides of
the market must produce them identically: sorted keys, no spaces, UTF-8 text rather than
``\\u`` escapes, and NaN or Infinity refused (they are not JSON and would not round-trip).
"""

from __future__ import annotations

import json
from typing import Any

from shared.errors import InvalidInput

__all__ = ["canonical_json"]


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 bytes of ``value``; ``InvalidInput`` if it is not plain JSON."""
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as err:
        raise InvalidInput(f"not canonical-JSON serialisable: {err}") from err
    return text.encode("utf-8")
