"""A bundle spread over several sticks (common/media/span.py, bundle_spec/SPAN.md)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from gapferry.common.errors import EnvironmentFailure, IncompleteBundle, InvalidData
from gapferry.common.media.span import (
    INDEX_NAME,
    SPAN_NAMESPACE,
    STICK_FILE,
    SourceFile,
    SpanIndex,
    StickSpace,
    build_index,
    check_span,
    encode_index,
    plan_span,
    read_index,
    signature_name,
    span_dir_name,
    trust_verifier,
    write_stick,
)
from gapferry.common.signers import KeyFileSigner
from gapferry.common.trust import TrustPolicy
from gapferry.fixtures.media_mounts import mount_fat32

MiB = 1024 * 1024
CREATED = "2026-11-23T11:00:00Z"


# --- helpers ---------------------------------------------------------------------------------


def make_bundle(root: Path, sizes: dict[str, int], *, seed: int = 1) -> Path:
    rnd = random.Random(seed)
    b = root / "transfer-0001"
    for rel, size in sizes.items():
        p = b / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rnd.randbytes(size))
    return b


def source_files(bundle: Path) -> list[SourceFile]:
    return [
        SourceFile(path=p.relative_to(bundle).as_posix(), size=p.stat().st_size)
        for p in sorted(bundle.rglob("*"))
        if p.is_file()
    ]


class Keys:
    def __init__(self, tmp: Path) -> None:
        key = tmp / "packer_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "packer", "-f", str(key)],
            check=True,
        )
        self.key = key
        self.signer = KeyFileSigner(key)
        pub = key.with_suffix(".pub").read_text().split()
        self.allowed = f'packer@site namespaces="{SPAN_NAMESPACE}" {pub[0]} {pub[1]}\n'
        self.verify = trust_verifier(TrustPolicy.from_text(self.allowed), now=datetime.now(tz=UTC))

    def sign(self, raw: bytes) -> bytes:
        return self.signer.sign_sshsig(raw, SPAN_NAMESPACE)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


def write_span(
    tmp: Path, keys: Keys, sizes: dict[str, int], spaces: list[StickSpace]
) -> tuple[Path, SpanIndex, bytes, list[Path]]:
    bundle = make_bundle(tmp / "staging", sizes)
    plan = plan_span(source_files(bundle), spaces)
    index = build_index(plan, source_root=bundle, bundle=bundle.name, created=CREATED)
    raw = encode_index(index)
    sig = keys.sign(raw)
    roots = []
    for n in range(1, len(spaces) + 1):
        root = tmp / f"stick{n}"
        root.mkdir()
        write_stick(
            index=index,
            raw_index=raw,
            signatures=[sig],
            number=n,
            source_root=bundle,
            stick_root=root,
        )
        roots.append(root)
    return bundle, index, raw, roots


SIZES = {
    "manifest.json": 3000,
    "manifest.json.1.sig": 300,
    "artifacts/aa.mender": 5 * MiB + 123,
    "artifacts/bb.mender": 2 * MiB,
    "COMPLETE": 64,
}
SPACES = [
    StickSpace(free_bytes=4 * MiB, label="STICK-A"),
    StickSpace(free_bytes=3 * MiB, label="STICK-B"),
    StickSpace(free_bytes=4 * MiB, label="STICK-C"),
]


# --- planning (pure) -------------------------------------------------------------------------


def test_plan_keeps_files_whole_when_they_fit() -> None:
    files = [SourceFile(path="a", size=10), SourceFile(path="b", size=20)]
    plan = plan_span(files, [StickSpace(free_bytes=2 * MiB)])
    assert [[s.stick for s in segs] for _, segs in plan.files] == [[1], [1]]
    assert [segs[0].name for _, segs in plan.files] == ["a", "b"]


def test_plan_splits_a_file_too_big_for_any_stick_across_sticks() -> None:
    plan = plan_span(
        [SourceFile(path="artifacts/big.mender", size=5 * MiB)],
        [StickSpace(free_bytes=4 * MiB), StickSpace(free_bytes=4 * MiB)],
        metadata_reserve=MiB,
    )
    (_, segs) = plan.files[0]
    assert [(s.stick, s.offset, s.length) for s in segs] == [
        (1, 0, 3 * MiB),
        (2, 3 * MiB, 2 * MiB),
    ]
    assert [s.name for s in segs] == ["big.mender.seg001", "big.mender.seg002"]


def test_plan_respects_fat32_file_size_limit_with_simulated_small_limit() -> None:
    """The same code path as FAT32's 4 GiB - 1, with a 1 MiB limit instead of writing GBs."""
    plan = plan_span(
        [SourceFile(path="big", size=3 * MiB + 5)],
        [StickSpace(free_bytes=10 * MiB, max_file_size=MiB, block_size=512)],
    )
    (_, segs) = plan.files[0]
    assert [s.length for s in segs] == [MiB, MiB, MiB, 5]
    assert all(s.stick == 1 for s in segs)


def test_plan_real_fat32_limit_splits_a_sparse_5gib_description() -> None:
    fat = StickSpace(free_bytes=64 * 1024**3, max_file_size=4 * 1024**3 - 1, block_size=32768)
    plan = plan_span([SourceFile(path="huge.mender", size=5 * 1024**3)], [fat])
    (_, segs) = plan.files[0]
    assert len(segs) == 2
    assert all(s.length <= 4 * 1024**3 - 1 for s in segs)
    assert sum(s.length for s in segs) == 5 * 1024**3


def test_plan_too_small_in_total_is_media_full_before_writing() -> None:
    with pytest.raises(EnvironmentFailure) as ei:
        plan_span([SourceFile(path="a", size=10 * MiB)], [StickSpace(free_bytes=4 * MiB)] * 2)
    assert ei.value.code == "media-full"
    assert "add another stick" in ei.value.remedy


def test_plan_refuses_escaping_paths() -> None:
    with pytest.raises(InvalidData) as ei:
        plan_span([SourceFile(path="../x", size=1)], [StickSpace(free_bytes=4 * MiB)])
    assert ei.value.code == "bad-path"


# --- writing, checking, assembling -----------------------------------------------------------


@pytest.mark.real_tools
def test_three_sticks_all_present_assemble_identical(tmp_path: Path, keys: Keys) -> None:
    bundle, index, raw, roots = write_span(tmp_path, keys, SIZES, SPACES)
    assert len({s.stick for f in index.files for s in f.segments}) == 3  # really spread
    # Any single stick carries the signed index.
    got, got_raw = read_index(roots[1] / span_dir_name(index.span_id), verify=keys.verify)
    assert got == index
    assert got_raw == raw
    report = check_span(got, roots)
    assert report.ok
    report.require()
    from gapferry.common.media.span import assemble

    out = assemble(got, report, tmp_path / "local")
    for p in bundle.rglob("*"):
        if p.is_file():
            assert (out / p.relative_to(bundle)).read_bytes() == p.read_bytes()


@pytest.mark.real_tools
def test_stick_missing_is_named_before_anything_starts(tmp_path: Path, keys: Keys) -> None:
    _, index, _, roots = write_span(tmp_path, keys, SIZES, SPACES)
    report = check_span(index, [roots[0], roots[2]])
    assert not report.ok
    states = {s.number: s.state for s in report.sticks}
    assert states == {1: "ok", 2: "missing", 3: "ok"}
    with pytest.raises(IncompleteBundle) as ei:
        report.require()
    assert ei.value.code == "span-stick-missing"
    assert "stick 2 of 3 (label STICK-B) is missing" in ei.value.message
    assert "STICK-A" not in ei.value.message


@pytest.mark.real_tools
def test_corrupt_stick_is_named(tmp_path: Path, keys: Keys) -> None:
    _, index, _, roots = write_span(tmp_path, keys, SIZES, SPACES)
    seg = next((f, s) for f in index.files for s in f.segments if s.stick == 3 and s.length > 1000)
    p = roots[2] / span_dir_name(index.span_id) / "data"
    p = p / Path(seg[0].path).parent / seg[1].name
    data = bytearray(p.read_bytes())
    data[500] ^= 0x04
    p.write_bytes(bytes(data))
    report = check_span(index, roots)
    assert [s.state for s in report.sticks] == ["ok", "ok", "corrupt"]
    with pytest.raises(InvalidData) as ei:
        report.require()
    assert ei.value.code == "span-stick-corrupt"
    assert "stick 3 of 3 (label STICK-C) is corrupt" in ei.value.message
    assert "digest mismatch" in ei.value.message
    # A quick (size-only) check would not see a flipped bit; the deep one does.
    assert check_span(index, roots, deep=False).ok


@pytest.mark.real_tools
def test_tampered_index_is_refused_before_decoding(tmp_path: Path, keys: Keys) -> None:
    _, index, raw, roots = write_span(tmp_path, keys, SIZES, SPACES)
    p = roots[0] / span_dir_name(index.span_id) / INDEX_NAME
    p.write_bytes(raw.replace(b"STICK-B", b"STICK-X"))
    with pytest.raises(InvalidData) as ei:
        read_index(p.parent, verify=keys.verify)
    assert ei.value.code == "bad-signature"


@pytest.mark.real_tools
def test_index_signed_by_untrusted_key_is_refused(tmp_path: Path, keys: Keys) -> None:
    _, index, _, roots = write_span(tmp_path, keys, SIZES, SPACES)
    (tmp_path / "k2").mkdir()
    other = Keys(tmp_path / "k2")
    with pytest.raises(InvalidData) as ei:
        read_index(roots[0] / span_dir_name(index.span_id), verify=other.verify)
    assert ei.value.code == "untrusted-signer"


@pytest.mark.real_tools
def test_unsigned_index_is_incomplete(tmp_path: Path, keys: Keys) -> None:
    _, index, _, roots = write_span(tmp_path, keys, SIZES, SPACES)
    d = roots[0] / span_dir_name(index.span_id)
    (d / signature_name(1)).unlink()
    with pytest.raises(IncompleteBundle) as ei:
        read_index(d, verify=keys.verify)
    assert ei.value.code == "span-index-missing"


@pytest.mark.real_tools
def test_index_signature_verifies_with_stock_ssh_keygen(tmp_path: Path, keys: Keys) -> None:
    _, index, _, roots = write_span(tmp_path, keys, SIZES, SPACES)
    d = roots[0] / span_dir_name(index.span_id)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(keys.allowed)
    with (d / INDEX_NAME).open("rb") as stdin:
        res = subprocess.run(
            [
                "ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "packer@site",
                "-n", SPAN_NAMESPACE, "-s", str(d / signature_name(1)),
            ],
            stdin=stdin, capture_output=True, text=True, check=False,
        )  # fmt: skip
    assert res.returncode == 0, res.stderr + res.stdout


@pytest.mark.real_tools
def test_stick_from_another_span_does_not_count(tmp_path: Path, keys: Keys) -> None:
    _, index, _, roots = write_span(tmp_path / "one", keys, SIZES, SPACES)
    _, other, _, other_roots = write_span(tmp_path / "two", keys, SIZES, SPACES)
    # Put the other span's stick 2 folder on our stick 2's mount point, renamed to our id.
    shutil.rmtree(roots[1] / span_dir_name(index.span_id))
    shutil.copytree(
        other_roots[1] / span_dir_name(other.span_id), roots[1] / span_dir_name(index.span_id)
    )
    report = check_span(index, roots)
    assert report.sticks[1].state == "missing"  # its stick.json names another span


# --- interrupted and resumed -----------------------------------------------------------------


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import msgspec
    from gapferry.common.media.span import SpanIndex, write_stick
    raw = Path(sys.argv[1]).read_bytes()
    sig = Path(sys.argv[2]).read_bytes()
    kill_after = int(sys.argv[5])
    done = 0
    def progress(n):
        global done
        done += n
        if done >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    write_stick(index=msgspec.json.decode(raw, type=SpanIndex), raw_index=raw,
                signatures=[sig], number=1, source_root=Path(sys.argv[3]),
                stick_root=Path(sys.argv[4]), progress=progress)
    """
)


@pytest.mark.real_tools
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_write_killed_at_random_point_then_resumed(tmp_path: Path, keys: Keys, seed: int) -> None:
    sizes = {f"artifacts/f{i}.bin": 700_000 + i * 1000 for i in range(6)}
    bundle = make_bundle(tmp_path / "staging", sizes, seed=seed)
    plan = plan_span(source_files(bundle), [StickSpace(free_bytes=64 * MiB, label="ONE")])
    index = build_index(plan, source_root=bundle, bundle=bundle.name, created=CREATED)
    raw = encode_index(index)
    (tmp_path / "index").write_bytes(raw)
    (tmp_path / "sig").write_bytes(keys.sign(raw))
    stick = tmp_path / "stick"
    stick.mkdir()
    total = sum(sizes.values())
    kill_after = random.Random(seed).randrange(1, total)
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "index"), str(tmp_path / "sig"),
         str(bundle), str(stick), str(kill_after)],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == -signal.SIGKILL, res.stderr
    span_dir = stick / span_dir_name(index.span_id)
    assert not (span_dir / STICK_FILE).exists()  # unfinished: no completion marker
    report = check_span(index, [stick])
    assert report.sticks[0].state == "unfinished"
    with pytest.raises(IncompleteBundle):
        report.require()
    # Finished segments before the kill are kept and not rewritten on resume.
    before = {
        p.name: p.stat().st_ino
        for p in (span_dir / "data" / "artifacts").iterdir()
        if not p.name.startswith(".")
    }
    written: list[int] = []
    write_stick(
        index=index,
        raw_index=raw,
        signatures=[(tmp_path / "sig").read_bytes()],
        number=1,
        source_root=bundle,
        stick_root=stick,
        progress=written.append,
    )
    after = {p.name: p.stat().st_ino for p in (span_dir / "data" / "artifacts").iterdir()}
    assert all(after[name] == ino for name, ino in before.items())
    assert sum(written) == total - sum(sizes[f"artifacts/{n}"] for n in before)
    assert not any(p.name.endswith(".part") for p in span_dir.rglob("*"))
    assert check_span(index, [stick]).ok


# --- on a real FAT32 stick -------------------------------------------------------------------


@pytest.mark.real_tools
@pytest.mark.root_mounts
def test_span_on_fat32_with_small_simulated_file_limit(tmp_path: Path, keys: Keys) -> None:
    bundle = make_bundle(tmp_path / "staging", {"artifacts/aa.mender": 3 * MiB + 7})
    with mount_fat32(tmp_path, size_mb=40, label="FATSTICK") as m:
        from gapferry.common.media.fsinfo import describe

        info = describe(m.path)
        assert info.max_file_size == 4 * 1024**3 - 1
        space = StickSpace(free_bytes=30 * MiB, max_file_size=MiB, block_size=512, label="FATSTICK")
        plan = plan_span(source_files(bundle), [space])
        index = build_index(plan, source_root=bundle, bundle=bundle.name, created=CREATED)
        raw = encode_index(index)
        write_stick(
            index=index,
            raw_index=raw,
            signatures=[keys.sign(raw)],
            number=1,
            source_root=bundle,
            stick_root=m.path,
        )
        got, _ = read_index(m.path / span_dir_name(index.span_id), verify=keys.verify)
        assert check_span(got, [m.path]).ok
        assert len(got.files[0].segments) == 4
    assert m.image is not None
    listing = subprocess.run(
        ["mdir", "-i", str(m.image), "-b", f"::/{span_dir_name(index.span_id)}/data/artifacts"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert listing.lower().count("aa.mender.seg") == 4
    h = hashlib.sha256()
    for i in range(1, 5):
        seg = subprocess.run(
            ["mtype", "-i", str(m.image),
             f"::/{span_dir_name(index.span_id)}/data/artifacts/aa.mender.seg{i:03d}"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        h.update(seg)
    assert h.hexdigest() == got.files[0].sha256
    assert msgspec.json.decode(raw, type=SpanIndex) == index
    assert os.path.getsize(bundle / "artifacts/aa.mender") == 3 * MiB + 7  # noqa: PTH202
