"""The reader's individual checks (`scan.scan_folder`, `steps`): the same rule raising for
`open_bundle` and recording for `gapferry audit`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec
import pytest
from gapferry.common.bundle.model import FileEntry
from gapferry.common.bundle.scan import scan_folder
from gapferry.common.bundle.steps import check_listing, hash_file, read_marker, read_signatures
from gapferry.common.errors import IncompleteBundle, InvalidData
from gapferry.common.limits import DEFAULT_LIMITS

VALID = (
    Path(__file__).resolve().parents[2]
    / "bundle_spec/vectors/valid-transfer/transfer-vectors-00000001-7e0c1a55"
)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return Path(shutil.copytree(VALID, tmp_path / VALID.name))


def test_scan_raises_the_first_problem_and_records_them_all(bundle: Path) -> None:
    (bundle / "a-link").symlink_to("manifest.json")
    os.link(bundle / "manifest.json.sig", bundle.parent / "elsewhere")
    (bundle / "zz-extra").write_text("x\n")
    with pytest.raises(InvalidData) as e:
        scan_folder(bundle, "transfer", DEFAULT_LIMITS)
    assert e.value.code == "unsafe-file"
    assert "a-link" in e.value.message
    found: list[InvalidData] = []
    listing = scan_folder(bundle, "transfer", DEFAULT_LIMITS, report=found.append)
    assert [x.code for x in found] == ["unsafe-file", "unsafe-file", "unexpected-file"]
    assert "has other hard links" in found[1].message
    assert "zz-extra" in found[2].message
    assert listing.signature_files == ()  # the hard-linked signature is never read
    assert set(listing.content) == {f"artifacts/{p.name}" for p in (bundle / "artifacts").iterdir()}


def test_signatures_are_ordered_by_number_and_counted(bundle: Path) -> None:
    sig = bundle / "manifest.json.sig"
    shutil.copyfile(sig, bundle / "manifest.json.sig.10")
    shutil.copyfile(sig, bundle / "manifest.json.sig.2")
    names = scan_folder(bundle, "transfer", DEFAULT_LIMITS).signature_files
    assert names == ("manifest.json.sig", "manifest.json.sig.2", "manifest.json.sig.10")
    few = msgspec.structs.replace(DEFAULT_LIMITS, signatures=2)
    with pytest.raises(InvalidData) as e:
        read_signatures(bundle, names, few)
    assert e.value.code == "too-many-signatures"


def test_marker_is_incomplete_when_oversized(bundle: Path) -> None:
    assert len(read_marker(bundle)) == 64
    (bundle / "COMPLETE").write_bytes(b"x" * 300)
    with pytest.raises(IncompleteBundle) as e:
        read_marker(bundle)
    assert e.value.code == "incomplete"


def test_listing_and_hash_steps_report_a_missing_file(bundle: Path) -> None:
    entry = FileEntry(path="artifacts/nope.mender", size=1, sha256="0" * 64)
    with pytest.raises(IncompleteBundle) as e:
        check_listing([entry], {})
    assert e.value.code == "missing-file"
    with pytest.raises(IncompleteBundle) as e2:
        hash_file(bundle, entry)  # removed between the listing and the read
    assert e2.value.code == "missing-file"
