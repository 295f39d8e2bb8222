"""What a federation made, and how it travels from the ServerApp's process to its caller.

Under ``flwr run`` the ServerApp runs in a process Flower starts, not in ``lwm federate``'s,
so it writes its outcome as JSON to the file the run config ``result`` names
(``write_outcome``) and ``client.federation.run`` reads it back (``read_outcome``): the
result, or the error that stopped it, raised again in the caller with its own class (and so
its exit code). JSON only, no pickle: folders, digests, manifests, the verdict, counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared import errors
from shared.errors import LwmError
from shared.files import write_atomically

if TYPE_CHECKING:
    from client.publish import Published


@dataclass(frozen=True)
class FederationResult:
    """What a federation made: the signed package (left at ``market.out``, or a temporary
    folder already removed when it was submitted), the market's verdict when submitted,
    how many holders' specs were merged and how many holders' updates were averaged."""

    published: Published
    holders: int
    trained: int

    def to_dict(self) -> dict[str, Any]:
        package, verdict = self.published.package, self.published.verdict
        return {
            "holders": self.holders,
            "trained": self.trained,
            "package": {
                "folder": str(package.folder),
                "digest": package.digest,
                "manifest": package.manifest.to_dict(),
            },
            "verdict": None
            if verdict is None
            else {
                "learnware_id": verdict.learnware_id,
                "status": verdict.status,
                "reason": verdict.reason,
                "manifest": verdict.manifest.to_dict(),
            },
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FederationResult:
        from client.publish import Published, Verdict
        from shared.learnware import Manifest, Package

        p, v = raw["package"], raw["verdict"]
        package = Package(Path(p["folder"]), Manifest.from_dict(p["manifest"]), p["digest"])
        verdict = None
        if v is not None:
            manifest = Manifest.from_dict(v["manifest"])
            verdict = Verdict(v["learnware_id"], v["status"], v["reason"], manifest)
        return cls(Published(package, verdict), int(raw["holders"]), int(raw["trained"]))


def write_outcome(
    path: Path, result: FederationResult | None = None, error: BaseException | None = None
) -> None:
    """Record the run's result, or the error that ended it (its class name and message)."""
    if error is not None:
        kind = type(error).__name__ if isinstance(error, LwmError) else None
        message = str(error) if kind else f"{type(error).__name__}: {error}"
        outcome: dict[str, Any] = {"error": {"class": kind, "message": message}}
    elif result is not None:
        outcome = {"result": result.to_dict()}
    else:
        raise ValueError("write_outcome needs a result or an error")
    write_atomically(path, json.dumps(outcome).encode())


def read_outcome(path: Path) -> FederationResult:
    """The result ``write_outcome`` recorded; the recorded error is raised again (an
    ``LwmError`` of the same class), and a missing file is an ``LwmError`` too."""
    if not path.is_file():
        raise LwmError("the federation ended without a learnware (see Flower's log above)")
    outcome = json.loads(path.read_text())
    if "error" in outcome:
        raise _error(outcome["error"])
    return FederationResult.from_dict(outcome["result"])


def _error(recorded: dict[str, Any]) -> LwmError:
    """The recorded error as the project's class of that name; another error's message
    (a bug, not the user's doing) as a plain ``LwmError`` that says the federation failed."""
    message = str(recorded["message"]).strip().replace("\n", " ")
    cls = getattr(errors, str(recorded.get("class")), None)
    if isinstance(cls, type) and issubclass(cls, LwmError):
        return cls(message)
    return LwmError(f"federation failed: {message}")
