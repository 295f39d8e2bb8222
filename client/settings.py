"""Reading a settings file: one TOML reader, so every bad file is the same one-line error."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from shared.errors import InvalidInput


def read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML file at ``path`` as a dict; ``InvalidInput`` if unreadable or not TOML."""
    file = Path(path)
    try:
        return tomllib.loads(file.read_text())
    except OSError as err:
        raise InvalidInput(f"cannot read {file}: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise InvalidInput(f"{file} is not valid TOML: {err}") from err
