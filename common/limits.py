"""Limits every reader of removable-media input enforces, in one place (STYLE.md practice 7).

The numbers are normative: `bundle_spec/SPEC.md` section "Limits" repeats them, and a reader in
another language must enforce at least these. Callers may lower them, never disable them.
"""

from __future__ import annotations

import msgspec

__all__ = ["DEFAULT_LIMITS", "Limits"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Upper bounds for everything read from media or from a peer."""

    #: Bytes of a transfer or result manifest as stored (before any decompression).
    manifest_bytes: int = 16 * MiB
    #: Bytes of a manifest after zstd decompression.
    manifest_decompressed_bytes: int = 64 * MiB
    #: Bytes of one detached signature file.
    signature_bytes: int = 64 * KiB
    #: Number of detached signatures attached to one manifest.
    signatures: int = 16
    #: Bytes of an OpenSSH allowed_signers trust file.
    allowed_signers_bytes: int = 1 * MiB
    #: Devices listed in one manifest.
    devices: int = 10_000
    #: Distinct artifacts in one bundle.
    artifacts: int = 1_000
    #: Files in a bundle folder (artifacts, parts, signatures, logs, custody events).
    files: int = 50_000
    #: Path components below the bundle root.
    path_depth: int = 4
    #: Length of one path component, in characters (FAT32/exFAT/NTFS: 255 UTF-16 units).
    name_length: int = 120
    #: Bytes of one artifact (or one artifact split into parts).
    artifact_bytes: int = 64 * GiB
    #: Log lines kept per device in a result bundle.
    log_lines: int = 2_000
    #: Bytes of the log kept per device (after decompression).
    log_bytes: int = 1 * MiB
    #: Bytes of one log line.
    log_line_bytes: int = 4 * KiB
    #: Status steps per device in a result bundle.
    status_steps: int = 32
    #: Inventory attributes per device (the Mender Server's own limit).
    inventory_attributes: int = 100
    #: Bytes of one inventory attribute value, as JSON.
    inventory_value_bytes: int = 64 * KiB
    #: Bytes of a Mender Artifact's header (decompressed) or metadata member.
    artifact_header_bytes: int = 16 * MiB
    #: Members in a Mender Artifact's outer or header tar.
    artifact_members: int = 10_000
    #: Bytes of a payload file after decompression, per file.
    payload_decompressed_bytes: int = 64 * GiB
    #: Bytes of one Mender Artifact payload tar (``data/NNNN.tar*``) after decompression.
    artifact_decompressed_bytes: int = 64 * GiB
    #: Path components of one entry in a `directory` payload's update.tar.
    payload_path_depth: int = 64
    #: Custody events in one custody log.
    custody_events: int = 1_000
    #: Bytes of one custody event file (``custody/NNNN.json``) as stored (common/audit/custody.py).
    custody_event_bytes: int = 16 * KiB
    #: Sticks one bundle may be spread over (span index, common/media/span.py).
    span_sticks: int = 64
    #: Bytes of a span index (``span-index.json``) as stored.
    span_index_bytes: int = 16 * MiB


DEFAULT_LIMITS = Limits()
