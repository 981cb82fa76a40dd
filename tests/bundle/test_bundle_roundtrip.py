"""Write, read back, resume, co-sign and tar round trips of real bundles (SPEC 3, 6.3, 7, 8)."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from gapferry.common.bundle import (
    FAT32_MAX_FILE_SIZE,
    OpenedBundle,
    Receipt,
    cosign,
    find_bundles,
    from_tar,
    open_bundle,
    to_tar,
)
from gapferry.common.errors import IncompleteBundle, InvalidData, UsageProblem
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.common.signers import load_signer
from gapferry.fixtures.selfcheck import BundleKeys, make_sample_result, make_sample_transfer
from gapferry.fixtures.sshkeys import generate_key


def read_all(opened: OpenedBundle, sha256: str) -> bytes:
    out = bytearray()
    buf = memoryview(bytearray(64))
    with opened.open_artifact(sha256) as s:
        while n := s.readinto(buf):
            out += buf[:n]
    return bytes(out)


def test_transfer_round_trip_with_split_artifact(
    transfer: Path, keys: BundleKeys, now: datetime
) -> None:
    opened = open_bundle(transfer, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
    m = opened.transfer.manifest
    assert opened.kind == "transfer"
    assert [d.name for d in m.devices] == ["pump-1", "pump-2", "pump-3"]
    assert len(m.artifacts) == 2  # pump-1 and pump-2 share one, stored once
    split = next(a for a in m.artifacts if a.parts)
    assert len(split.parts) == 3
    assert all(f.verified for f in opened.files)
    data = read_all(opened, split.sha256)
    assert hashlib.sha256(data).hexdigest() == split.sha256
    assert len(data) == split.size
    assert (
        (transfer / "COMPLETE")
        .read_bytes()
        .decode()
        .endswith(opened.verified.manifest_sha256 + "\n")
    )


def test_open_artifact_detects_change_after_verification(
    transfer: Path, keys: BundleKeys, now: datetime
) -> None:
    opened = open_bundle(transfer, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
    a = next(a for a in opened.transfer.manifest.artifacts if not a.parts)
    p = transfer / a.path
    p.write_bytes(b"X" + p.read_bytes()[1:])
    with pytest.raises(InvalidData) as e:
        read_all(opened, a.sha256)
    assert e.value.code == "digest-mismatch"


def test_result_round_trip_with_logs(tmp_path: Path, keys: BundleKeys, now: datetime) -> None:
    receipt = Receipt(
        transfer_bundle_id="7e0c1a55-0b1e-4c2a-9f00-000000000001", transfer_manifest_sha256="a" * 64
    )
    bundle = make_sample_result(tmp_path / "stick", signers=[keys.a.signer], receipt=receipt)
    opened = open_bundle(bundle, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
    m = opened.result.manifest
    assert m.receipt == receipt
    assert [d.outcome for d in m.devices] == ["success", "failure", "skipped"]
    log = opened.read_log("pump-1")
    assert [line.message for line in log][-1] == "committed app-v2"
    assert opened.read_log("pump-3") == []
    assert m.devices[0].inventory[2].value == ["10.0.0.5/24", "10.0.1.5/24"]
    with pytest.raises(UsageProblem):
        _ = opened.transfer


def test_long_log_keeps_the_last_lines_within_limits(
    tmp_path: Path, keys: BundleKeys, now: datetime
) -> None:
    from gapferry.common.bundle import (
        Actor,
        LogLine,
        ResultDevicePlan,
        StatusStep,
        write_result_bundle,
    )

    t = now.replace(microsecond=0) - timedelta(hours=1)
    lines = [
        LogLine(timestamp=t, level="info", message=f"line {i} " + "x" * 100) for i in range(5000)
    ]
    lines.append(LogLine(timestamp=t, level="info", message="y" * 10_000))
    bundle = write_result_bundle(
        tmp_path,
        site="s",
        sequence=1,
        receipt=Receipt(
            transfer_bundle_id="7e0c1a55-0b1e-4c2a-9f00-000000000001",
            transfer_manifest_sha256="b" * 64,
        ),
        applier=Actor(name="t", host="h", software="s"),
        started=t,
        finished=t,
        created=t,
        signers=[keys.a.signer],
        devices=[
            ResultDevicePlan(
                name="d",
                mender_device_id="i",
                deployment_id="x",
                outcome="success",
                steps=[StatusStep(status="success", at=t)],
                log=lines,
            )
        ],
    )
    opened = open_bundle(bundle, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
    got = opened.read_log("d")
    assert len(got) == DEFAULT_LIMITS.log_lines
    assert got[-1].message.endswith("[cut]")
    assert got[-2].message.startswith("line 4999 ")


def test_interrupted_write_is_incomplete_then_resumes(
    tmp_path: Path, keys: BundleKeys, now: datetime
) -> None:
    kw = {"bundle_id": "11111111-2222-4333-8444-555555555555", "max_file_size": 128}
    bundle = make_sample_transfer(tmp_path / "stick", tmp_path / "w", signers=[keys.a.signer], **kw)  # type: ignore[arg-type]
    (bundle / "COMPLETE").unlink()
    with pytest.raises(IncompleteBundle) as e:
        open_bundle(bundle, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
    assert e.value.code == "incomplete"
    part = sorted((bundle / "artifacts").glob("*.part000"))[0]
    before = part.stat().st_mtime_ns
    other = sorted((bundle / "artifacts").glob("*.part002"))[0]
    other.unlink()  # lost in the crash
    (bundle / "artifacts" / f".{other.name}.part").write_bytes(b"half")  # leftover temp file
    again = make_sample_transfer(tmp_path / "stick", tmp_path / "w", signers=[keys.a.signer], **kw)  # type: ignore[arg-type]
    assert again == bundle
    assert part.stat().st_mtime_ns == before  # present and verified: not rewritten
    assert other.exists()
    assert not (bundle / "artifacts" / f".{other.name}.part").exists()
    open_bundle(bundle, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)


def test_writing_over_a_complete_bundle_is_refused(
    transfer: Path, keys: BundleKeys, tmp_path: Path
) -> None:
    import json

    bundle_id = json.loads((transfer / "manifest.json").read_bytes())["bundle_id"]
    with pytest.raises(UsageProblem) as e:
        make_sample_transfer(
            tmp_path / "stick",
            tmp_path / "work",
            signers=[keys.a.signer],
            bundle_id=bundle_id,
            max_file_size=128,
        )
    assert e.value.code == "bundle-exists"


def test_default_part_size_is_fat32_limit() -> None:
    assert FAT32_MAX_FILE_SIZE == 4 * 1024**3 - 1


def test_cosign_with_ssh_keygen_signer_meets_two_of_two(
    transfer: Path, keys: BundleKeys, tmp_path: Path, now: datetime
) -> None:
    """A second signature made by real `ssh-keygen -Y sign` verifies in gapferry."""
    kp = generate_key(tmp_path, "carol", "ecdsa-p256")
    allowed = tmp_path / "allowed2"
    allowed.write_text(
        keys.allowed_signers.read_text() + f"carol@plant-a {kp.public_line()}\n", encoding="utf-8"
    )
    from gapferry.common.trust import TrustPolicy

    one = TrustPolicy.from_file(allowed, threshold=1)
    two = TrustPolicy.from_file(allowed, threshold=2)
    with pytest.raises(InvalidData):
        open_bundle(transfer, policy=two, now=now, limits=DEFAULT_LIMITS)
    marker = (transfer / "COMPLETE").read_bytes()
    manifest = (transfer / "manifest.json").read_bytes()
    sig = cosign(transfer, load_signer(str(kp.public)), policy=one, now=now)
    assert sig.name == "manifest.json.sig.2"
    assert (transfer / "COMPLETE").read_bytes() == marker
    assert (transfer / "manifest.json").read_bytes() == manifest
    opened = open_bundle(transfer, policy=two, now=now, limits=DEFAULT_LIMITS)
    assert opened.verified.trust.distinct_trusted == 2
    with pytest.raises(UsageProblem) as e:
        cosign(transfer, keys.a.signer, policy=one, now=now)
    assert e.value.code == "already-signed"


def test_tar_round_trip(transfer: Path, keys: BundleKeys, tmp_path: Path, now: datetime) -> None:
    tar = to_tar(transfer, tmp_path / "bundle.tar", limits=DEFAULT_LIMITS)
    opened = from_tar(
        tar, tmp_path / "imported", policy=keys.policy(), now=now, limits=DEFAULT_LIMITS
    )
    assert opened.path == tmp_path / "imported" / transfer.name
    assert opened.verified.raw == (transfer / "manifest.json").read_bytes()
    assert sorted(p.name for p in (tmp_path / "imported").iterdir()) == [transfer.name]
    import tarfile

    with tarfile.open(tar) as t:
        names = t.getnames()
    assert names[-1].endswith("/COMPLETE")


def test_tar_with_a_link_is_refused_and_leaves_nothing(
    transfer: Path, keys: BundleKeys, tmp_path: Path, now: datetime
) -> None:
    import io
    import tarfile

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as t:
        t.add(transfer, arcname=transfer.name)
        info = tarfile.TarInfo(f"{transfer.name}/artifacts/x.mender")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        t.addfile(info)
        data = b"escape"
        info = tarfile.TarInfo(f"{transfer.name}/../escape")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with pytest.raises(InvalidData) as e:
        from_tar(evil, tmp_path / "imported", policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
    assert e.value.code == "unsafe-file"
    assert list((tmp_path / "imported").iterdir()) == []


def test_tar_escaping_name_is_refused(
    transfer: Path, keys: BundleKeys, tmp_path: Path, now: datetime
) -> None:
    import io
    import tarfile

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as t:
        t.add(transfer, arcname=transfer.name)
        info = tarfile.TarInfo(f"{transfer.name}/../../escape")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(InvalidData) as e:
        from_tar(evil, tmp_path / "imported", policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
    assert e.value.code == "bad-path"
    assert not (tmp_path / "escape").exists()


def test_find_bundles_and_os_litter_is_skipped(
    transfer: Path, keys: BundleKeys, now: datetime
) -> None:
    media = transfer.parent.parent
    assert find_bundles(media) == [transfer]
    assert find_bundles(transfer.parent) == [transfer]
    (transfer / "._manifest.json").write_bytes(b"apple double")
    (transfer / ".DS_Store").write_bytes(b"x")
    (transfer / "artifacts" / "Thumbs.db").write_bytes(b"x")
    opened = open_bundle(transfer, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
    assert set(opened.ignored) == {"._manifest.json", ".DS_Store", "artifacts/Thumbs.db"}


def test_hard_link_is_refused(
    transfer: Path, keys: BundleKeys, tmp_path: Path, now: datetime
) -> None:
    a = sorted((transfer / "artifacts").iterdir())[-1]
    os.link(a, tmp_path / "outside")
    with pytest.raises(InvalidData) as e:
        open_bundle(transfer, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
    assert e.value.code == "unsafe-file"


def test_fifo_is_refused(transfer: Path, keys: BundleKeys, now: datetime) -> None:
    os.mkfifo(transfer / "artifacts" / "fifo")
    with pytest.raises(InvalidData) as e:
        open_bundle(transfer, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
    assert e.value.code == "unsafe-file"


def test_check_files_false_checks_sizes_only(
    transfer: Path, keys: BundleKeys, now: datetime
) -> None:
    a = sorted((transfer / "artifacts").iterdir())[-1]
    a.write_bytes(b"Y" + a.read_bytes()[1:])
    opened = open_bundle(
        transfer, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS, check_files=False
    )
    assert not any(f.verified for f in opened.files)
    with pytest.raises(InvalidData):
        open_bundle(transfer, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)


def test_cut_short_tar_is_incomplete(
    transfer: Path, keys: BundleKeys, tmp_path: Path, now: datetime
) -> None:
    tar = to_tar(transfer, tmp_path / "b.tar", limits=DEFAULT_LIMITS)
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    with pytest.raises(IncompleteBundle):
        from_tar(tar, tmp_path / "imported", policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
    assert list((tmp_path / "imported").iterdir()) == []


def test_oversized_marker_is_incomplete(transfer: Path, keys: BundleKeys, now: datetime) -> None:
    (transfer / "COMPLETE").write_bytes(b"x" * 1000)
    with pytest.raises(IncompleteBundle):
        open_bundle(transfer, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)


@pytest.mark.parametrize("where", ["artifacts/sub", "logs", "manifest.json.sig.1"])
def test_unexpected_folder_or_name(
    transfer: Path, keys: BundleKeys, now: datetime, where: str
) -> None:
    if where.endswith(".1"):
        (transfer / where).write_bytes((transfer / "manifest.json.sig").read_bytes())
    else:
        (transfer / where).mkdir()
    with pytest.raises(InvalidData) as e:
        open_bundle(transfer, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
    assert e.value.code == "unexpected-file"


def test_writer_refuses_what_readers_would_refuse(tmp_path: Path, keys: BundleKeys) -> None:
    from gapferry.common.bundle import (
        Actor,
        ArtifactSource,
        Deployment,
        TransferDevicePlan,
        write_transfer_bundle,
    )

    art = tmp_path / "a.mender"
    art.write_bytes(b"same bytes")
    copy = tmp_path / "b.mender"
    copy.write_bytes(b"same bytes")

    def dev(name: str, src: Path, artifact_name: str) -> TransferDevicePlan:
        return TransferDevicePlan(
            name=name,
            mender_device_id=name,
            identity={},
            device_type="t",
            current_artifact_name="c",
            deployment=Deployment(id="d", name="d"),
            artifact=ArtifactSource(path=src, name=artifact_name),
        )

    actor = Actor(name="a", host="h", software="s")
    with pytest.raises(UsageProblem) as e:
        write_transfer_bundle(
            tmp_path / "m", site="s", sequence=1, packer=actor, devices=[], signers=[keys.a.signer]
        )
    assert e.value.code == "no-devices"
    with pytest.raises(UsageProblem) as e:
        write_transfer_bundle(
            tmp_path / "m",
            site="s",
            sequence=1,
            packer=actor,
            devices=[dev("x", art, "n")],
            signers=[],
        )
    assert e.value.code == "unsigned"
    with pytest.raises(InvalidData) as e2:
        write_transfer_bundle(
            tmp_path / "m",
            site="s",
            sequence=1,
            packer=actor,
            devices=[dev("x", art, "one-name"), dev("y", copy, "other-name")],
            signers=[keys.a.signer],
        )
    assert e2.value.code == "inconsistent-manifest"
    assert not list((tmp_path / "m").rglob("COMPLETE"))


def test_linked_marker_is_unsafe_not_incomplete(
    transfer: Path, keys: BundleKeys, tmp_path: Path, now: datetime
) -> None:
    real = tmp_path / "marker"
    real.write_bytes((transfer / "COMPLETE").read_bytes())
    (transfer / "COMPLETE").unlink()
    (transfer / "COMPLETE").symlink_to(real)
    with pytest.raises(InvalidData) as e:
        open_bundle(transfer, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
    assert e.value.code == "unsafe-file"
    assert not isinstance(e.value, IncompleteBundle)


def test_unexpected_file_without_marker_is_incomplete(
    transfer: Path, keys: BundleKeys, now: datetime
) -> None:
    (transfer / "COMPLETE").unlink()
    (transfer / ".goutputstream-ABC").write_bytes(b"file manager copying")
    with pytest.raises(IncompleteBundle):
        open_bundle(transfer, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)


def test_renamed_folder_is_refused(transfer: Path, keys: BundleKeys, now: datetime) -> None:
    renamed = transfer.with_name(transfer.name.replace("-00000001-", "-00000099-"))
    transfer.rename(renamed)
    with pytest.raises(InvalidData) as e:
        open_bundle(renamed, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
    assert e.value.code == "name-mismatch"


def test_resume_with_another_part_size_leaves_no_strays(
    tmp_path: Path, keys: BundleKeys, now: datetime
) -> None:
    bid = "22222222-2222-4333-8444-555555555555"
    stick, work = tmp_path / "stick", tmp_path / "w"
    bundle = make_sample_transfer(stick, work, signers=[keys.a.signer], bundle_id=bid)
    assert not list((bundle / "artifacts").glob("*.part000"))
    (bundle / "COMPLETE").unlink()
    make_sample_transfer(stick, work, signers=[keys.a.signer], bundle_id=bid, max_file_size=128)
    opened = open_bundle(bundle, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
    assert any(a.parts for a in opened.transfer.manifest.artifacts)


def test_resume_rewrites_a_damaged_part(tmp_path: Path, keys: BundleKeys, now: datetime) -> None:
    bid = "33333333-2222-4333-8444-555555555555"
    stick, work = tmp_path / "stick", tmp_path / "w"
    bundle = make_sample_transfer(
        stick, work, signers=[keys.a.signer], bundle_id=bid, max_file_size=128
    )
    (bundle / "COMPLETE").unlink()
    part = sorted((bundle / "artifacts").glob("*.part001"))[0]
    part.write_bytes(b"\0" * part.stat().st_size)
    with pytest.raises(InvalidData) as e:
        make_sample_transfer(stick, work, signers=[keys.a.signer], bundle_id=bid, max_file_size=128)
    assert e.value.code == "digest-mismatch"
    make_sample_transfer(stick, work, signers=[keys.a.signer], bundle_id=bid, max_file_size=128)
    open_bundle(bundle, policy=keys.policy(), now=now, limits=DEFAULT_LIMITS)
