"""The audit records what the bundle reader refuses, with the reader's own codes (one copy of
each rule: `gapferry.common.bundle.scan` and `.steps`), and audits the single-file form."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import Result
from gapferry.common.audit.gather import BundleInput, gather_bundle
from gapferry.common.bundle import to_tar
from gapferry.common.bundle.read import open_bundle
from gapferry.common.errors import GapferryError
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.common.trust import TrustPolicy

Cli = Callable[..., Result]

SPEC = Path(__file__).resolve().parents[2] / "bundle_spec"
VECTORS = SPEC / "vectors"
INDEX: dict[str, dict[str, Any]] = {
    v["name"]: v for v in json.loads((VECTORS / "index.json").read_text())["vectors"]
}
#: Codes the audit judges differently on purpose: an expired transfer bundle is audited as
#: evidence (its results are compared with the expiry, core.py), not refused.
NOT_A_FAILURE = {"expired"}
_CODE_RE = re.compile(r"(?:^|; )([a-z][a-z0-9-]+): ")


def _make_vectors() -> ModuleType:
    name = "gapferry_bundle_spec_make_vectors"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SPEC / "make_vectors.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _vector(name: str, tmp_path: Path) -> tuple[Path, TrustPolicy]:
    v = INDEX[name]
    src = VECTORS / v["path"]
    bundle = tmp_path / src.name
    shutil.copytree(src, bundle, symlinks=True)
    if "derive" in v:
        _make_vectors().derive(v["derive"], bundle)
    return bundle, TrustPolicy.from_file(VECTORS / v["trust"], threshold=v["threshold"])


def _codes(b: BundleInput) -> dict[str, str]:
    """Code -> status of every failed or incomplete finding the audit recorded."""
    out: dict[str, str] = {}
    for c in b.checks:
        if c.status in {"fail", "incomplete"}:
            for code in _CODE_RE.findall(c.summary):
                out.setdefault(code, c.status)
    for f in b.files:
        if f.status != "pass" and f.found is not None:
            code = "digest-mismatch" if f.found.startswith("sha256 ") else f.found.split(":")[0]
            out.setdefault(code, f.status)
    return out


@pytest.mark.parametrize("name", sorted(INDEX))
def test_audit_records_the_readers_code_for_every_vector(name: str, tmp_path: Path) -> None:
    bundle, policy = _vector(name, tmp_path)
    now = datetime.now(tz=UTC)
    want = INDEX[name]["expect"]
    code: str | None = None
    try:
        open_bundle(bundle, policy=policy, now=now, limits=DEFAULT_LIMITS)
    except GapferryError as e:
        code = e.code
    assert code == want["code"]  # the reader is unchanged
    found = _codes(gather_bundle(bundle, policy=policy, now=now, limits=DEFAULT_LIMITS))
    if code is None or code in NOT_A_FAILURE:
        assert found == {}
    else:
        assert code in found, found
        assert found[code] == ("incomplete" if want["exit"] == 3 else "fail")


def _gather(world: Any, path: Path) -> BundleInput:
    return gather_bundle(
        path, policy=world.keys.policy(), now=datetime.now(tz=UTC), limits=DEFAULT_LIMITS
    )


def _check(b: BundleInput, name: str) -> Any:
    return next(c for c in b.checks if c.name == name)


def test_renamed_folder_is_a_name_mismatch(world: Any) -> None:
    assert _check(_gather(world, world.transfer), "name").status == "pass"
    renamed = world.transfer.with_name(world.transfer.name[:-8] + "00000000")
    world.transfer.rename(renamed)
    b = _gather(world, renamed)
    name = _check(b, "name")
    assert name.status == "fail"
    assert name.summary.startswith("name-mismatch: ")
    assert b.verified is not None  # everything else was still checked
    assert all(f.status == "pass" for f in b.files)


def test_sig_1_is_not_a_signature_name(world: Any) -> None:
    sig = world.transfer / "manifest.json.sig"
    shutil.copyfile(sig, world.transfer / "manifest.json.sig.1")
    layout = _check(_gather(world, world.transfer), "layout")
    assert layout.status == "fail"
    assert "unexpected-file" in layout.summary
    assert "manifest.json.sig.1" in layout.summary


def test_layout_lists_every_problem_including_custody_shape(world: Any) -> None:
    (world.transfer / "evil.sh").write_text("echo hi\n")
    (world.transfer / "custody").mkdir()
    (world.transfer / "custody" / "notes.txt").write_text("x\n")
    (world.transfer / "link").symlink_to("manifest.json")
    layout = _check(_gather(world, world.transfer), "layout")
    assert layout.status == "fail"
    assert "custody/notes.txt" in layout.summary
    assert "evil.sh" in layout.summary
    assert "unsafe-file: refusing 'link'" in layout.summary


def test_marker_is_read_first_and_the_audit_goes_on(world: Any) -> None:
    (world.transfer / "COMPLETE").write_bytes(b"not a marker\n")
    b = _gather(world, world.transfer)
    assert b.checks[0].name == "marker"
    assert b.checks[0].status == "incomplete"
    assert b.verified is not None
    assert [c.name for c in b.checks].count("marker") == 1  # no binding check without a marker


def test_audit_accepts_the_single_file_form(
    world: Any, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    tar = to_tar(world.transfer, tmp_path / "bundle.tar", limits=DEFAULT_LIMITS)
    res = cli("audit", tar, "--trust", world.keys.allowed_signers, "--json")
    rep = json.loads(res.stdout)
    assert res.exit_code == 0, rep
    assert rep["transfer"]["folder"] == world.transfer.name
    single = next(c for c in rep["transfer"]["checks"] if c["name"] == "single-file")
    assert single["status"] == "pass"
    assert "bundle.tar" in single["summary"]
    assert not list(scratch.iterdir())  # the temporary folder is removed


def test_single_file_form_is_audited_even_when_it_does_not_verify(
    world: Any, cli: Cli, tmp_path: Path
) -> None:
    target = sorted((world.transfer / "artifacts").glob("*.mender"))[0]
    data = bytearray(target.read_bytes())
    data[0] ^= 1
    target.write_bytes(bytes(data))
    tar = to_tar(world.transfer, tmp_path / "bundle.tar", limits=DEFAULT_LIMITS)
    res = cli("audit", tar, "--trust", world.keys.allowed_signers, "--json")
    rep = json.loads(res.stdout)
    assert res.exit_code == 1
    bad = [f for f in rep["transfer"]["files"] if f["status"] == "fail"]
    assert [f["path"] for f in bad] == [f"artifacts/{target.name}"]


def test_hostile_tar_fails_its_own_check(world: Any, cli: Cli, tmp_path: Path) -> None:
    tar = tmp_path / "evil.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
        top = tarfile.TarInfo(world.transfer.name)
        top.type = tarfile.DIRTYPE
        t.addfile(top)
        link = tarfile.TarInfo(f"{world.transfer.name}/manifest.json")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        t.addfile(link)
    res = cli("audit", tar, "--trust", world.keys.allowed_signers, "--json")
    rep = json.loads(res.stdout)
    assert res.exit_code == 1
    single = next(c for c in rep["transfer"]["checks"] if c["name"] == "single-file")
    assert single["status"] == "fail"
    assert single["summary"].startswith("unsafe-file: ")
    assert rep["transfer"]["verified"] is False


def test_result_tar_given_as_transfer_is_refused_as_data(
    world: Any, make_result: Callable[..., Path], cli: Cli, tmp_path: Path
) -> None:
    result = make_result(world)
    tar = to_tar(result, tmp_path / "result.tar", limits=DEFAULT_LIMITS)
    res = cli("audit", tar, "--trust", world.keys.allowed_signers, "--json")
    assert res.exit_code == 1
    single = next(
        c for c in json.loads(res.stdout)["transfer"]["checks"] if c["name"] == "single-file"
    )
    assert single["summary"].startswith("wrong-kind: ")
    res = cli("audit", world.transfer, tar, "--trust", world.keys.allowed_signers, "--json")
    assert res.exit_code == 0, res.stdout
