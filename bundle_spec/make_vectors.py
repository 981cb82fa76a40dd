#!/usr/bin/env python3
"""Regenerate the golden vectors (bundle_spec/vectors/) and the JSON Schemas (bundle_spec/schemas/).

    .venv/bin/python bundle_spec/make_vectors.py            # rewrite both folders
    .venv/bin/python bundle_spec/make_vectors.py --out DIR  # vectors into DIR (tests compare)

Keys: throwaway Ed25519 keys derived from fixed seeds inside this script, so the vectors come
out the same bit for bit (Ed25519 signatures are deterministic; times and ids are fixed). Only
PUBLIC keys (in allowed_signers files) are written; private keys live in a temporary folder that
is deleted at the end. Valid vectors are created 2026-01-01 and expire 2036-01-01; the "expired"
vector uses past dates.

Each vector's expected verdict and error code are in vectors/index.json; after writing, this
script verifies every vector with gapferry and stops if a verdict differs. Two vectors cannot be
stored in git and are *derived* at test time from a stored one (index.json `derive`): a symbolic
link, and a manifest larger than the 16 MiB limit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import msgspec
import zstandard
from gapferry.common.bundle import (
    FileEntry,
    LogRef,
    Receipt,
    ResultManifest,
    TransferManifest,
    namespace_for,
    open_bundle,
)
from gapferry.common.bundle.canonical import encode, manifest_sha256, render_sha256sums
from gapferry.common.bundle.layout import log_path, marker_bytes, signature_name
from gapferry.common.bundle.schema import json_schemas
from gapferry.common.errors import IncompleteBundle, InvalidData
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.common.signers import Signer
from gapferry.common.trust import TrustPolicy
from gapferry.fixtures.selfcheck import (
    ThrowawayKey,
    make_sample_result,
    make_sample_transfer,
    throwaway_key,
)

HERE = Path(__file__).resolve().parent
CREATED = datetime(2026, 1, 1, tzinfo=UTC)
EXPIRES = datetime(2036, 1, 1, tzinfo=UTC)
TRANSFER_ID = "7e0c1a55-0b1e-4c2a-9f00-000000000001"
RESULT_ID = "7e0c1a55-0b1e-4c2a-9f00-000000000002"
SITE = "vectors"
PRINCIPAL_A = "packer@vectors"
PRINCIPAL_B = "cosigner@vectors"


@dataclass
class Vector:
    name: str
    description: str
    verdict: str  # valid | invalid | incomplete
    code: str | None
    trust: str = "keys/allowed_signers"
    threshold: int = 1
    path: str = ""
    derive: str | None = None
    base: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def exit(self) -> int:
        return {"valid": 0, "invalid": 1, "incomplete": 3}[self.verdict]


@dataclass
class Keys:
    a: ThrowawayKey
    b: ThrowawayKey
    untrusted: ThrowawayKey


def _only_bundle(vector_dir: Path) -> Path:
    (found,) = [p for p in vector_dir.iterdir() if p.is_dir()]
    return found


def _resign(bundle: Path, raw: bytes, signers: list[Signer], *, namespace: str) -> None:
    """Replace manifest, signatures and marker (what a hostile but trusted writer could do)."""
    for old in bundle.glob("manifest.json.sig*"):
        old.unlink()
    (bundle / "manifest.json").write_bytes(raw)
    for i, s in enumerate(signers, start=1):
        (bundle / signature_name(i)).write_bytes(s.sign_sshsig(raw, namespace))
    (bundle / "COMPLETE").write_bytes(marker_bytes(manifest_sha256(raw)))


M = TypeVar("M", TransferManifest, ResultManifest)


def _with_files(bundle: Path, m: M, files: list[FileEntry]) -> M:
    """Rewrite SHA256SUMS for `files` and return `m` listing them."""
    files = sorted(files, key=lambda f: f.path)
    sums = render_sha256sums(files)
    (bundle / "SHA256SUMS").write_bytes(sums)
    return msgspec.structs.replace(
        m, files=files, checksums_sha256=hashlib.sha256(sums).hexdigest()
    )


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def build(out: Path, keys: Keys, work: Path) -> list[Vector]:
    vectors: list[Vector] = []
    a = keys.a.signer

    def transfer(
        name: str,
        *,
        signers: list[Signer] | None = None,
        created: datetime = CREATED,
        expires: datetime = EXPIRES,
    ) -> Path:
        d = out / name
        make_sample_transfer(
            d / "media",
            work / name,
            signers=signers or [a],
            site=SITE,
            sequence=1,
            bundle_id=TRANSFER_ID,
            created=created,
            expires=expires,
            max_file_size=128,
        )
        # vectors keep the bundle folder directly under the vector folder
        inner = _only_bundle(d / "media" / "gapferry")
        inner.rename(d / inner.name)
        shutil.rmtree(d / "media")
        return d / inner.name

    def copy_of(src: Path, name: str) -> Path:
        shutil.copytree(src.parent, out / name)
        return out / name / src.name

    def add(v: Vector, bundle: Path) -> None:
        v.path = str(bundle.relative_to(out))
        vectors.append(v)

    valid = transfer("valid-transfer")
    add(
        Vector(
            name="valid-transfer",
            description="three devices, two artifacts (one split into parts), signed by packer@vectors",
            verdict="valid",
            code=None,
        ),
        valid,
    )

    vt = json.loads((valid / "manifest.json").read_bytes())
    receipt = Receipt(
        transfer_bundle_id=vt["bundle_id"],
        transfer_manifest_sha256=manifest_sha256((valid / "manifest.json").read_bytes()),
    )
    rdir = out / "valid-result"
    make_sample_result(
        rdir / "media",
        signers=[a],
        receipt=receipt,
        site=SITE,
        sequence=1,
        result_id=RESULT_ID,
        started=CREATED,
    )
    inner = _only_bundle(rdir / "media" / "gapferry")
    inner.rename(rdir / inner.name)
    shutil.rmtree(rdir / "media")
    valid_result = rdir / inner.name
    add(
        Vector(
            name="valid-result",
            description="result for valid-transfer: success with log and inventory, failure, skipped",
            verdict="valid",
            code=None,
        ),
        valid_result,
    )

    cos = transfer("valid-transfer-cosigned", signers=[a, keys.b.signer])
    add(
        Vector(
            name="valid-transfer-cosigned",
            description="signed by two distinct trusted keys; verified with --threshold 2",
            verdict="valid",
            code=None,
            threshold=2,
        ),
        cos,
    )

    artifact = sorted((valid / "artifacts").iterdir())[-1]  # the unsplit one
    b = copy_of(valid, "flipped-artifact-byte")
    _flip(b / "artifacts" / artifact.name, 7)
    add(
        Vector(
            name="flipped-artifact-byte",
            description="one bit changed in an artifact",
            verdict="invalid",
            code="digest-mismatch",
        ),
        b,
    )

    b = copy_of(valid, "flipped-manifest-byte")
    raw = (b / "manifest.json").read_bytes()
    _flip(b / "manifest.json", raw.index(b'"site":"vectors"') + 9)
    add(
        Vector(
            name="flipped-manifest-byte",
            description="one bit changed in manifest.json (site name)",
            verdict="invalid",
            code="bad-signature",
        ),
        b,
    )

    b = copy_of(valid, "flipped-signature-byte")
    sig = b / "manifest.json.sig"
    lines = sig.read_bytes().split(b"\n")
    last_data = len(lines) - 3  # the line before the END line (and the final empty string)
    offset = sum(len(x) + 1 for x in lines[:last_data]) + 5
    data = bytearray(sig.read_bytes())
    data[offset] = ord("B") if data[offset] != ord("B") else ord("C")
    sig.write_bytes(bytes(data))
    add(
        Vector(
            name="flipped-signature-byte",
            description="one base64 character changed in the signature bytes",
            verdict="invalid",
            code="bad-signature",
        ),
        b,
    )

    b = copy_of(valid, "truncated-artifact")
    t = b / "artifacts" / artifact.name
    t.write_bytes(t.read_bytes()[:-10])
    add(
        Vector(
            name="truncated-artifact",
            description="an artifact 10 bytes short (interrupted copy)",
            verdict="incomplete",
            code="truncated-file",
        ),
        b,
    )

    b = copy_of(valid, "missing-artifact")
    (b / "artifacts" / artifact.name).unlink()
    add(
        Vector(
            name="missing-artifact",
            description="an artifact listed in the manifest is absent",
            verdict="incomplete",
            code="missing-file",
        ),
        b,
    )

    b = copy_of(valid, "extra-unlisted-file")
    (b / "artifacts" / "evil.mender").write_bytes(b"not listed anywhere\n")
    add(
        Vector(
            name="extra-unlisted-file",
            description="a file the manifest does not list",
            verdict="invalid",
            code="unexpected-file",
        ),
        b,
    )

    b = transfer("untrusted-signer", signers=[keys.untrusted.signer])
    add(
        Vector(
            name="untrusted-signer",
            description="signed by a key not in allowed_signers",
            verdict="invalid",
            code="untrusted-signer",
        ),
        b,
    )

    b = copy_of(valid, "key-outside-validity")
    add(
        Vector(
            name="key-outside-validity",
            description="the signer's allowed_signers line ended (valid-before) in 2025",
            verdict="invalid",
            code="outside-validity",
            trust="keys/allowed_signers.expired-key",
        ),
        b,
    )

    b = copy_of(valid, "wrong-namespace")
    raw = (b / "manifest.json").read_bytes()
    _resign(b, raw, [a], namespace=namespace_for("result"))
    add(
        Vector(
            name="wrong-namespace",
            description="a transfer manifest signed in the result namespace",
            verdict="invalid",
            code="wrong-namespace",
        ),
        b,
    )

    b = copy_of(valid, "below-threshold")
    add(
        Vector(
            name="below-threshold",
            description="one trusted signature where --threshold 2 is required",
            verdict="invalid",
            code="below-threshold",
            threshold=2,
        ),
        b,
    )

    b = copy_of(valid, "same-key-twice")
    shutil.copy(b / "manifest.json.sig", b / "manifest.json.sig.2")
    add(
        Vector(
            name="same-key-twice",
            description="the same key signed twice: counted once, so --threshold 2 is not met",
            verdict="invalid",
            code="below-threshold",
            threshold=2,
        ),
        b,
    )

    b = copy_of(valid, "path-escape")
    m = msgspec.json.decode((b / "manifest.json").read_bytes(), type=TransferManifest)
    m = _with_files(
        b, m, [*m.files, FileEntry(path="../../escape.mender", size=1, sha256="0" * 64)]
    )
    _resign(b, encode(m), [a], namespace=namespace_for("transfer"))
    add(
        Vector(
            name="path-escape",
            description="the (signed) manifest lists a file at ../../escape.mender",
            verdict="invalid",
            code="bad-path",
        ),
        b,
    )

    b = copy_of(valid, "no-completion-marker")
    (b / "COMPLETE").unlink()
    add(
        Vector(
            name="no-completion-marker",
            description="COMPLETE is missing (writing never finished)",
            verdict="incomplete",
            code="incomplete",
        ),
        b,
    )

    b = copy_of(valid, "marker-mismatch")
    (b / "COMPLETE").write_bytes(marker_bytes("0" * 64))
    add(
        Vector(
            name="marker-mismatch",
            description="COMPLETE binds another manifest",
            verdict="invalid",
            code="marker-mismatch",
        ),
        b,
    )

    b = transfer(
        "expired",
        created=datetime(2020, 1, 1, tzinfo=UTC),
        expires=datetime(2020, 2, 1, tzinfo=UTC),
    )
    add(
        Vector(
            name="expired",
            description="created 2020-01-01, expired 2020-02-01",
            verdict="invalid",
            code="expired",
        ),
        b,
    )

    b = transfer(
        "created-in-future",
        created=datetime(2090, 1, 1, tzinfo=UTC),
        expires=datetime(2099, 1, 1, tzinfo=UTC),
    )
    add(
        Vector(
            name="created-in-future",
            description="created 2090: the verifier's clock is probably wrong",
            verdict="invalid",
            code="clock-wrong",
        ),
        b,
    )

    b = copy_of(valid, "unknown-field")
    doc = json.loads((b / "manifest.json").read_bytes())
    doc["priority"] = "urgent"
    raw = (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
    _resign(b, raw, [a], namespace=namespace_for("transfer"))
    add(
        Vector(
            name="unknown-field",
            description="a signed manifest with a field format version 1 does not define",
            verdict="invalid",
            code="malformed-manifest",
        ),
        b,
    )

    b = copy_of(valid, "duplicate-key")
    raw = (b / "manifest.json").read_bytes()
    raw = raw.replace(b'"site":"vectors"', b'"site":"elsewhere","site":"vectors"', 1)
    _resign(b, raw, [a], namespace=namespace_for("transfer"))
    add(
        Vector(
            name="duplicate-key",
            description="a signed manifest with the key 'site' twice (JSON readers disagree on which counts)",
            verdict="invalid",
            code="malformed-manifest",
        ),
        b,
    )

    b = copy_of(valid, "unsupported-version")
    doc = json.loads((b / "manifest.json").read_bytes())
    doc["format_version"] = 2
    raw = (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
    _resign(b, raw, [a], namespace=namespace_for("transfer"))
    add(
        Vector(
            name="unsupported-version",
            description="format_version 2",
            verdict="invalid",
            code="unsupported-version",
        ),
        b,
    )

    b = copy_of(valid_result, "zstd-bomb")
    m2 = msgspec.json.decode((b / "manifest.json").read_bytes(), type=ResultManifest)
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\n" * (64 * 1024 * 1024))
    bomb_sha = hashlib.sha256(bomb).hexdigest()
    old = m2.devices[0].log
    if old is None:
        raise RuntimeError("the sample result's first device has no log")
    (b / old.path).unlink()
    (b / log_path(bomb_sha)).write_bytes(bomb)
    ref = LogRef(
        path=log_path(bomb_sha),
        size=len(bomb),
        sha256=bomb_sha,
        decompressed_size=old.decompressed_size,
        lines=old.lines,
    )
    devices = [msgspec.structs.replace(m2.devices[0], log=ref), *m2.devices[1:]]
    files = [f for f in m2.files if f.path != old.path] + [
        FileEntry(path=ref.path, size=ref.size, sha256=ref.sha256)
    ]
    m2 = _with_files(b, msgspec.structs.replace(m2, devices=devices), files)
    _resign(b, encode(m2), [a], namespace=namespace_for("result"))
    add(
        Vector(
            name="zstd-bomb",
            description=f"a {len(bomb)}-byte log that decompresses to 64 MiB while the manifest declares {ref.decompressed_size} bytes",
            verdict="invalid",
            code="zstd-bomb",
        ),
        b,
    )

    vectors.append(
        Vector(
            name="symlink",
            description="derived at test time: the unsplit artifact of valid-transfer replaced by a symbolic link to a copy of itself",
            verdict="invalid",
            code="unsafe-file",
            derive="symlink-artifact",
            base="valid-transfer",
            path=vectors[0].path,
        )
    )
    vectors.append(
        Vector(
            name="oversized-manifest",
            description="derived at test time: manifest.json of valid-transfer padded with spaces to 16 MiB + 1 byte",
            verdict="invalid",
            code="manifest-too-large",
            derive="oversize-manifest",
            base="valid-transfer",
            path=vectors[0].path,
        )
    )
    return vectors


def derive(kind: str, bundle: Path) -> None:
    """Apply a test-time derivation (index.json `derive`) to a COPY of a vector's bundle."""
    if kind == "symlink-artifact":
        target = sorted((bundle / "artifacts").iterdir())[-1]
        elsewhere = bundle.parent / "elsewhere.mender"
        shutil.copy(target, elsewhere)
        target.unlink()
        target.symlink_to(elsewhere)
    elif kind == "oversize-manifest":
        path = bundle / "manifest.json"
        with path.open("ab") as f:
            f.write(b" " * (DEFAULT_LIMITS.manifest_bytes + 1 - path.stat().st_size))
    else:
        raise ValueError(kind)


def check(out: Path, vectors: list[Vector], now: datetime) -> list[str]:
    """Verify every vector with gapferry; return the mismatches."""
    problems = []
    for v in vectors:
        src = out / v.path
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / src.name
            shutil.copytree(src, bundle, symlinks=True)
            if v.derive:
                derive(v.derive, bundle)
            policy = TrustPolicy.from_file(out / v.trust, threshold=v.threshold)
            try:
                open_bundle(bundle, policy=policy, now=now, limits=DEFAULT_LIMITS)
                got, code = "valid", None
            except IncompleteBundle as e:
                got, code = "incomplete", e.code
            except InvalidData as e:
                got, code = "invalid", e.code
        if (got, code) != (v.verdict, v.code):
            problems.append(f"{v.name}: expected {v.verdict}/{v.code}, got {got}/{code}")
    return problems


def write_index(out: Path, vectors: list[Vector]) -> None:
    index = {
        "format_version": 1,
        # zstd output may differ between library versions; the logs were compressed with this.
        "zstd_version": ".".join(str(n) for n in zstandard.ZSTD_VERSION),
        "note": "Golden vectors for bundle format v1 (bundle_spec/SPEC.md). Regenerate with "
        "bundle_spec/make_vectors.py. 'path' is a bundle folder relative to this file; verify it "
        "with 'gapferry verify <path> --trust <trust> --threshold <threshold>'. Vectors with "
        "'derive' are made at test time from a copy of 'path' (git cannot hold a symbolic link "
        "safely, and a 16 MiB manifest is not small).",
        "vectors": [
            {
                "name": v.name,
                "description": v.description,
                "path": v.path,
                "trust": v.trust,
                "threshold": v.threshold,
                "expect": {"verdict": v.verdict, "code": v.code, "exit": v.exit},
                **({"derive": v.derive} if v.derive else {}),
            }
            for v in vectors
        ],
    }
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def make_keys(tmp: Path) -> Keys:
    return Keys(
        a=throwaway_key(tmp, "vector-packer", seed=b"gapferry vector key A"),
        b=throwaway_key(tmp, "vector-cosigner", seed=b"gapferry vector key B"),
        untrusted=throwaway_key(tmp, "vector-untrusted", seed=b"gapferry vector key U"),
    )


def generate(out: Path, *, now: datetime | None = None) -> list[str]:
    """Write all vectors into `out` (emptied first); return verification mismatches."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="gapferry-vector-keys-") as tmp:
        keys = make_keys(Path(tmp))
        (out / "keys").mkdir()
        (out / "keys" / "allowed_signers").write_text(
            keys.a.allowed_signers_line(PRINCIPAL_A)
            + "\n"
            + keys.b.allowed_signers_line(PRINCIPAL_B)
            + "\n",
            encoding="utf-8",
        )
        (out / "keys" / "allowed_signers.expired-key").write_text(
            keys.a.allowed_signers_line(PRINCIPAL_A, options='valid-before="20250101"') + "\n",
            encoding="utf-8",
        )
        for name, k in (("packer", keys.a), ("cosigner", keys.b), ("untrusted", keys.untrusted)):
            (out / "keys" / f"{name}.pub").write_text(k.public_line + "\n", encoding="utf-8")
        vectors = build(out, keys, Path(tmp) / "work")
    write_index(out, vectors)
    return check(out, vectors, now or datetime.now(tz=UTC))


def write_schemas(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, data in json_schemas().items():
        (out / name).write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=HERE / "vectors", help="vectors folder")
    p.add_argument("--schemas", type=Path, default=HERE / "schemas", help="schemas folder")
    args = p.parse_args(argv)
    problems = generate(args.out)
    write_schemas(args.schemas)
    for line in problems:
        print(f"MISMATCH {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
