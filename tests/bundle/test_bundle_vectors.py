"""Golden vectors (bundle_spec/vectors): `gapferry verify` gives each one its verdict and exact
code; one named test per hostile vector; the vectors and schemas are what the script makes."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner
from gapferry.common.bundle.schema import json_schemas
from gapferry.common.cli import main

SPEC = Path(__file__).resolve().parents[2] / "bundle_spec"
VECTORS = SPEC / "vectors"
INDEX: dict[str, dict[str, Any]] = {
    v["name"]: v for v in json.loads((VECTORS / "index.json").read_text())["vectors"]
}


def _make_vectors() -> ModuleType:
    """bundle_spec/make_vectors.py, imported by path (it is a script, not a package module)."""
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


def run_vector(name: str, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    """Verify a copy of vector `name` (derived if the index says so) with --json."""
    v = INDEX[name]
    src = VECTORS / v["path"]
    bundle = tmp_path / src.name
    shutil.copytree(src, bundle, symlinks=True)
    if "derive" in v:
        _make_vectors().derive(v["derive"], bundle)
    result = CliRunner().invoke(
        main,
        [
            "verify",
            str(bundle),
            "--trust",
            str(VECTORS / v["trust"]),
            "--threshold",
            str(v["threshold"]),
            "--json",
        ],
    )
    return result.exit_code, json.loads(result.output)


def expect(name: str, tmp_path: Path) -> dict[str, Any]:
    code, doc = run_vector(name, tmp_path)
    want = INDEX[name]["expect"]
    assert code == want["exit"], doc
    assert doc["verdict"] == want["verdict"]
    if want["code"] is None:
        assert doc["ok"] is True
    else:
        assert doc["error"]["code"] == want["code"], doc["error"]
    return doc


def test_index_names_every_vector_folder() -> None:
    folders = {p.name for p in VECTORS.iterdir() if p.is_dir()} - {"keys"}
    stored = {v["path"].split("/")[0] for v in INDEX.values()}
    assert folders == stored
    hostile = {n for n, v in INDEX.items() if v["expect"]["verdict"] != "valid"}
    assert len(hostile) >= 19


@pytest.mark.parametrize("name", sorted(INDEX))
def test_vector_verdict_matches_index(name: str, tmp_path: Path) -> None:
    expect(name, tmp_path)


def test_valid_transfer_report_lists_signature_and_files(tmp_path: Path) -> None:
    doc = expect("valid-transfer", tmp_path)
    sig = doc["trust"]["signatures"][0]
    assert sig["principal"] == "packer@vectors"
    assert sig["key_type"] == "ssh-ed25519"
    assert sig["fingerprint"].startswith("SHA256:")
    assert len(doc["files"]) == 4
    assert all(f["verified"] for f in doc["files"])


def test_valid_result(tmp_path: Path) -> None:
    doc = expect("valid-result", tmp_path)
    assert doc["kind"] == "result"


def test_cosigned_two_of_two(tmp_path: Path) -> None:
    doc = expect("valid-transfer-cosigned", tmp_path)
    assert doc["trust"]["distinct_trusted"] == 2


def test_flipped_artifact_byte(tmp_path: Path) -> None:
    assert expect("flipped-artifact-byte", tmp_path)["error"]["code"] == "digest-mismatch"


def test_flipped_manifest_byte(tmp_path: Path) -> None:
    assert expect("flipped-manifest-byte", tmp_path)["error"]["code"] == "bad-signature"


def test_flipped_signature_byte(tmp_path: Path) -> None:
    assert expect("flipped-signature-byte", tmp_path)["error"]["code"] == "bad-signature"


def test_truncated_artifact_is_incomplete(tmp_path: Path) -> None:
    assert expect("truncated-artifact", tmp_path)["error"]["code"] == "truncated-file"


def test_missing_artifact_is_incomplete(tmp_path: Path) -> None:
    assert expect("missing-artifact", tmp_path)["error"]["code"] == "missing-file"


def test_extra_unlisted_file(tmp_path: Path) -> None:
    doc = expect("extra-unlisted-file", tmp_path)
    assert "evil.mender" in doc["error"]["message"]


def test_untrusted_signer(tmp_path: Path) -> None:
    doc = expect("untrusted-signer", tmp_path)
    assert doc["trust"]["distinct_trusted"] == 0


def test_key_outside_validity_window(tmp_path: Path) -> None:
    assert expect("key-outside-validity", tmp_path)["error"]["code"] == "outside-validity"


def test_wrong_namespace(tmp_path: Path) -> None:
    assert expect("wrong-namespace", tmp_path)["error"]["code"] == "wrong-namespace"


def test_below_threshold(tmp_path: Path) -> None:
    assert expect("below-threshold", tmp_path)["error"]["code"] == "below-threshold"


def test_same_key_twice_counted_once(tmp_path: Path) -> None:
    doc = expect("same-key-twice", tmp_path)
    checks = doc["trust"]["signatures"]
    assert [c["ok"] for c in checks] == [True, True]
    assert checks[1]["duplicate_of"] == 0
    assert doc["trust"]["distinct_trusted"] == 1


def test_path_escaping_the_root(tmp_path: Path) -> None:
    doc = expect("path-escape", tmp_path)
    assert "../../escape.mender" in doc["error"]["message"]
    assert not (tmp_path.parent / "escape.mender").exists()


def test_symbolic_link(tmp_path: Path) -> None:
    assert expect("symlink", tmp_path)["error"]["code"] == "unsafe-file"


def test_oversized_manifest(tmp_path: Path) -> None:
    assert expect("oversized-manifest", tmp_path)["error"]["code"] == "manifest-too-large"


def test_zstd_bomb(tmp_path: Path) -> None:
    assert expect("zstd-bomb", tmp_path)["error"]["code"] == "zstd-bomb"


def test_no_completion_marker(tmp_path: Path) -> None:
    assert expect("no-completion-marker", tmp_path)["error"]["code"] == "incomplete"


def test_marker_binding_another_manifest(tmp_path: Path) -> None:
    assert expect("marker-mismatch", tmp_path)["error"]["code"] == "marker-mismatch"


def test_expired(tmp_path: Path) -> None:
    assert expect("expired", tmp_path)["error"]["code"] == "expired"


def test_created_in_future_says_clock_is_wrong(tmp_path: Path) -> None:
    doc = expect("created-in-future", tmp_path)
    assert "clock is probably wrong" in doc["error"]["message"]


def test_unknown_field(tmp_path: Path) -> None:
    doc = expect("unknown-field", tmp_path)
    assert "priority" in doc["error"]["message"]


def test_duplicate_json_key(tmp_path: Path) -> None:
    doc = expect("duplicate-key", tmp_path)
    assert "more than once" in doc["error"]["message"]


def test_unsupported_version(tmp_path: Path) -> None:
    assert expect("unsupported-version", tmp_path)["error"]["code"] == "unsupported-version"


@pytest.mark.parametrize(
    "name", ["expired", "created-in-future", "unknown-field", "path-escape", "unsupported-version"]
)
def test_manifest_refused_after_good_signatures_still_reports_them(
    name: str, tmp_path: Path
) -> None:
    """The verdict names the manifest's defect, and the report still says who signed it."""
    doc = expect(name, tmp_path)
    assert doc["trust"]["satisfied"] is True
    assert [s["principal"] for s in doc["trust"]["signatures"]] == ["packer@vectors"]
    v = INDEX[name]
    args = ["verify", str(VECTORS / v["path"]), "--trust", str(VECTORS / v["trust"])]
    text = CliRunner().invoke(main, args).output
    assert "#0 trusted: packer@vectors (ssh-ed25519 SHA256:" in text
    assert "manifest: refused after its signatures were accepted" in text
    assert f"verdict: INVALID ({v['expect']['code']})" in text


def test_trust_failure_is_not_reported_as_accepted_signatures(tmp_path: Path) -> None:
    doc = expect("untrusted-signer", tmp_path)
    assert doc["trust"]["satisfied"] is False
    v = INDEX["untrusted-signer"]
    args = ["verify", str(VECTORS / v["path"]), "--trust", str(VECTORS / v["trust"])]
    text = CliRunner().invoke(main, args).output
    assert "refused after its signatures were accepted" not in text


def test_vectors_are_regenerated_bit_for_bit(tmp_path: Path) -> None:
    """Everything is compared, except that result vectors (zstd-compressed logs, whose bytes
    depend on the zstd library version) are compared only under the zstd version that made them."""
    import zstandard

    problems = _make_vectors().generate(tmp_path / "v")
    assert problems == []
    same_zstd = json.loads((VECTORS / "index.json").read_text())["zstd_version"] == ".".join(
        str(n) for n in zstandard.ZSTD_VERSION
    )
    with_logs = {p.relative_to(VECTORS).parts[0] for p in VECTORS.rglob("logs")}
    if not same_zstd:
        assert {"valid-result", "zstd-bomb"} <= with_logs

    def listing(root: Path) -> list[Path]:
        rels = (p.relative_to(root) for p in root.rglob("*"))
        return sorted(r for r in rels if same_zstd or r.parts[0] not in with_logs | {"index.json"})

    want = listing(VECTORS)
    assert listing(tmp_path / "v") == want
    assert len(want) > 100
    for rel in want:
        if (VECTORS / rel).is_file():
            assert (tmp_path / "v" / rel).read_bytes() == (VECTORS / rel).read_bytes(), rel


def test_no_private_key_is_committed() -> None:
    for p in VECTORS.rglob("*"):
        if p.is_file():
            assert b"PRIVATE KEY" not in p.read_bytes(), p


def test_schemas_are_up_to_date() -> None:
    for name, data in json_schemas().items():
        assert (SPEC / "schemas" / name).read_bytes() == data, (
            f"{name} is stale: run .venv/bin/python bundle_spec/make_vectors.py"
        )
