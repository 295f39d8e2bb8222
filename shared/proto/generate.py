"""Generate ``shared/proto/market_pb2{,_grpc}.py`` and ``market_pb2.pyi`` from the .proto.

Run ``python -m shared.proto.generate`` after editing ``protos/learnware/market/v1/market.proto``
and commit the result; ``--check`` regenerates into a temporary folder and exits 1 when the
committed files differ (tests/test_proto.py does the same), so stale code cannot slip in.

Why a script and not a bare protoc line: protoc writes the files into a
``learnware/market/v1/`` tree and makes the gRPC module import ``from learnware.market.v1
import market_pb2``, a package that does not exist here. We flatten the output into
``shared/proto/`` and rewrite that one import to ``from shared.proto import market_pb2``.

Output depends on the grpcio-tools version (its gencode version is written into the files);
the project pins grpcio-tools 1.80.*, see LIBRARIES.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_FILE = "learnware/market/v1/market.proto"
OUT_DIR = Path(__file__).resolve().parent
GENERATED = ("market_pb2.py", "market_pb2.pyi", "market_pb2_grpc.py")

_PROTOC_IMPORT = "from learnware.market.v1 import market_pb2"
_PACKAGE_IMPORT = "from shared.proto import market_pb2"


def _well_known_include() -> str:
    """grpc_tools ships google/protobuf/*.proto (timestamp.proto) in its ``_proto`` folder."""
    return str(resources.files("grpc_tools") / "_proto")


def _run_protoc(work: Path) -> None:
    from grpc_tools import protoc  # heavy-ish and only needed here

    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{_well_known_include()}",
        f"--python_out={work}",
        f"--pyi_out={work}",
        f"--grpc_python_out={work}",
        PROTO_FILE,
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code} on {PROTO_FILE}")


def _fix_imports(text: str) -> str:
    """Point the generated gRPC module at ``shared.proto.market_pb2``."""
    return text.replace(_PROTOC_IMPORT, _PACKAGE_IMPORT)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc and write the three generated files, flattened, into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lwm-protoc-") as tmp:
        work = Path(tmp)
        _run_protoc(work)
        produced = work / Path(PROTO_FILE).parent
        written = []
        for name in GENERATED:
            text = _fix_imports((produced / name).read_text(encoding="utf-8"))
            target = out_dir / name
            target.write_text(text, encoding="utf-8")
            written.append(target)
    return written


def stale_files(committed_dir: Path = OUT_DIR) -> list[str]:
    """Names of generated files in ``committed_dir`` that differ from a fresh generation."""
    with tempfile.TemporaryDirectory(prefix="lwm-proto-check-") as tmp:
        fresh = Path(tmp)
        generate(fresh)
        stale = []
        for name in GENERATED:
            committed = committed_dir / name
            if not committed.is_file() or committed.read_bytes() != (fresh / name).read_bytes():
                stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.proto.generate", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the committed files are stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(
                f"stale generated code: {', '.join(stale)}; run `python -m shared.proto.generate`",
                file=sys.stderr,
            )
            return 1
        print("generated code is up to date")
        return 0
    for path in generate(OUT_DIR):
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
