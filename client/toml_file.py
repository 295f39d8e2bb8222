"""Settings files (``lwm simulate --config``, ``lwm federate``'s ``FED.toml``) are TOML; any
problem reading one is a single ``InvalidInput`` line naming the file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from shared.errors import InvalidInput


def read_toml(path: str | Path) -> dict[str, Any]:
    """The table in ``path``; ``InvalidInput`` when it cannot be read or is not TOML."""
    file = Path(path)
    try:
        return tomllib.loads(file.read_text())
    except OSError as err:
        raise InvalidInput(f"cannot read {file}: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise InvalidInput(f"{file} is not valid TOML: {err}") from err
