"""The stock-tools procedure of bundle_spec/SPEC.md section 9, run literally (its ```sh blocks)
with real ssh-keygen, sha256sum, find and jq against the golden vectors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SPEC_DIR = Path(__file__).resolve().parents[2] / "bundle_spec"
VECTORS = SPEC_DIR / "vectors"
INDEX = {v["name"]: v for v in json.loads((VECTORS / "index.json").read_text())["vectors"]}

pytestmark = pytest.mark.real_tools


def procedure() -> str:
    """The shell blocks of section 9, in order."""
    text = (SPEC_DIR / "SPEC.md").read_text(encoding="utf-8")
    section = text.split("## 9. Verifying with stock tools", 1)[1].split("\n## 10.", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 4
    return "\n".join(blocks)


def run_procedure(
    name: str, tmp_path: Path, *, threshold: int | None = None
) -> subprocess.CompletedProcess[str]:
    for tool in ("ssh-keygen", "sha256sum", "jq", "find"):
        assert shutil.which(tool), f"{tool} is missing: run tests/run.sh to install it"
    v = INDEX[name]
    src = VECTORS / v["path"]
    bundle = tmp_path / src.name
    shutil.copytree(src, bundle)
    env = {
        **os.environ,
        "BUNDLE": str(bundle),
        "ALLOWED_SIGNERS": str(VECTORS / v["trust"]),
        "THRESHOLD": str(threshold if threshold is not None else v["threshold"]),
    }
    return subprocess.run(
        ["sh", "-e", "-c", procedure()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("name", ["valid-transfer", "valid-result", "valid-transfer-cosigned"])
def test_stock_tools_accept_valid_bundles(name: str, tmp_path: Path) -> None:
    proc = run_procedure(name, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert 'Good "gapferry-' in proc.stdout


@pytest.mark.parametrize(
    "name",
    [
        "flipped-artifact-byte",
        "flipped-manifest-byte",
        "flipped-signature-byte",
        "truncated-artifact",
        "missing-artifact",
        "extra-unlisted-file",
        "untrusted-signer",
        "key-outside-validity",
        "wrong-namespace",
        "below-threshold",
        "same-key-twice",
        "no-completion-marker",
        "marker-mismatch",
        "expired",
    ],
)
def test_stock_tools_reject_hostile_bundles(name: str, tmp_path: Path) -> None:
    proc = run_procedure(name, tmp_path)
    assert proc.returncode != 0, f"{name} passed the stock-tools procedure:\n{proc.stdout}"


def test_stock_tools_threshold_two_needs_two_distinct_keys(tmp_path: Path) -> None:
    assert run_procedure("valid-transfer", tmp_path / "a", threshold=2).returncode != 0
    assert run_procedure("valid-transfer-cosigned", tmp_path / "b", threshold=2).returncode == 0
