"""The learnware package format (DESIGN §5): manifest, signed directory, safe tar.

Public surface::

    from shared.learnware import Manifest, build_package, verify_package, pack_tar, unpack_tar
"""

from shared.learnware.layout import PACKAGE_FILES, PAYLOAD_FILES, PackageLimits
from shared.learnware.manifest import (
    Contributor,
    DpLedger,
    DpPart,
    DpTotal,
    FileEntry,
    Manifest,
    SpecEntry,
)
from shared.learnware.package import (
    Package,
    VerifiedPackage,
    build_package,
    read_manifest,
    signing_payload,
    verify_package,
)
from shared.learnware.safetensors_header import TensorInfo, read_safetensors_header
from shared.learnware.tarball import TarDigest, pack_tar, unpack_tar, write_tar

__all__ = [
    "PACKAGE_FILES",
    "PAYLOAD_FILES",
    "Contributor",
    "DpLedger",
    "DpPart",
    "DpTotal",
    "FileEntry",
    "Manifest",
    "Package",
    "PackageLimits",
    "SpecEntry",
    "TarDigest",
    "TensorInfo",
    "VerifiedPackage",
    "build_package",
    "pack_tar",
    "read_manifest",
    "read_safetensors_header",
    "signing_payload",
    "unpack_tar",
    "verify_package",
    "write_tar",
]
