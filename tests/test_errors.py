"""The one exception hierarchy: each error class has its own CLI exit code."""

from __future__ import annotations

import shared.errors as errors


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


SHARED = {"PrivacyError"}  # exits 4 like SpecError: "4 spec/privacy" in the README


def test_every_error_class_exits_with_its_own_code() -> None:
    classes = [errors.LwmError, *_all_subclasses(errors.LwmError)]
    codes: dict[int, str] = {}
    for cls in (c for c in classes if c.__name__ not in SHARED):
        assert cls.exit_code not in codes, f"{cls.__name__} reuses {codes.get(cls.exit_code)}"
        codes[cls.exit_code] = cls.__name__
    assert codes[2] == "InvalidInput" and codes[15] == "UntrustedKey"
