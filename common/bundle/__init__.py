"""gapferry.common.bundle: bundle format version 1 (bundle_spec/SPEC.md).

The public surface, for pack, ingest and apply:

- models: `TransferManifest`, `ResultManifest` and their parts (`model`), canonical `encode`;
- the pure core: `verify_transfer_manifest`, `verify_result_manifest` -> `VerifiedTransfer`,
  `VerifiedResult`; `check_not_replayed`; `trust_before_failure`;
- reading media: `open_bundle` -> `OpenedBundle` (`.transfer`, `.result`, `.open_artifact`,
  `.read_log`), `find_bundles`; its individual checks, for callers that record rather than
  stop (`gapferry audit`): `scan.scan_folder` and the steps in `steps`;
- writing: `write_transfer_bundle`, `write_result_bundle`, `cosign`;
- the single-file form: `to_tar`, `from_tar`.
"""

from gapferry.common.bundle.canonical import encode, manifest_sha256
from gapferry.common.bundle.cosign import cosign
from gapferry.common.bundle.layout import (
    FAT32_MAX_FILE_SIZE,
    MEDIA_ROOT_DIR,
    Kind,
    namespace_for,
)
from gapferry.common.bundle.model import (
    FORMAT_VERSION,
    Actor,
    ArtifactEntry,
    ArtifactRef,
    Deployment,
    FileEntry,
    InventoryAttribute,
    LogLine,
    LogRef,
    Receipt,
    ResultDevice,
    ResultManifest,
    StatusStep,
    TransferDevice,
    TransferManifest,
)
from gapferry.common.bundle.read import (
    ArtifactStream,
    FileCheck,
    OpenedBundle,
    find_bundles,
    open_bundle,
)
from gapferry.common.bundle.tarform import from_tar, to_tar
from gapferry.common.bundle.verify import (
    VerifiedResult,
    VerifiedTransfer,
    check_not_replayed,
    trust_before_failure,
    verify_result_manifest,
    verify_transfer_manifest,
)
from gapferry.common.bundle.write import (
    ArtifactSource,
    ResultDevicePlan,
    TransferDevicePlan,
    default_actor,
    utc_now,
    write_result_bundle,
    write_transfer_bundle,
)

__all__ = [
    "FAT32_MAX_FILE_SIZE",
    "FORMAT_VERSION",
    "MEDIA_ROOT_DIR",
    "Actor",
    "ArtifactEntry",
    "ArtifactRef",
    "ArtifactSource",
    "ArtifactStream",
    "Deployment",
    "FileCheck",
    "FileEntry",
    "InventoryAttribute",
    "Kind",
    "LogLine",
    "LogRef",
    "OpenedBundle",
    "Receipt",
    "ResultDevice",
    "ResultDevicePlan",
    "ResultManifest",
    "StatusStep",
    "TransferDevice",
    "TransferDevicePlan",
    "TransferManifest",
    "VerifiedResult",
    "VerifiedTransfer",
    "check_not_replayed",
    "cosign",
    "default_actor",
    "encode",
    "find_bundles",
    "from_tar",
    "manifest_sha256",
    "namespace_for",
    "open_bundle",
    "to_tar",
    "trust_before_failure",
    "utc_now",
    "verify_result_manifest",
    "verify_transfer_manifest",
    "write_result_bundle",
    "write_transfer_bundle",
]
