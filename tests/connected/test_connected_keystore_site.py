"""Device keystore (phase 1) and site files."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from gapferry.common.cli import main
from gapferry.common.errors import InvalidData, UsageProblem
from gapferry.connected.keystore import KeyAlgorithm, Keystore
from gapferry.connected.site import Mode, load_site, write_example


@pytest.mark.parametrize("alg", list(KeyAlgorithm))
def test_keygen_signs_as_the_server_verifies(tmp_path: Path, alg: KeyAlgorithm) -> None:
    ks = Keystore(tmp_path / "keys")
    pub_pem = ks.generate("dev-1", algorithm=alg)
    assert stat.S_IMODE(ks.key_path("dev-1").stat().st_mode) == 0o600
    key = ks.load("dev-1")
    body = b'{"id_data":"{\\"mac\\":\\"x\\"}","pubkey":"...","tenant_token":""}'
    sig = key.sign(body)
    pub = serialization.load_pem_public_key(pub_pem.encode())
    if isinstance(pub, rsa.RSAPublicKey):
        assert pub.key_size == 3072
        pub.verify(sig, body, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        assert pub.curve.name == "secp256r1"
        assert sig[0] == 0x30  # ASN.1 DER SEQUENCE, not raw r||s
        pub.verify(sig, body, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(pub, ed25519.Ed25519PublicKey)
        pub.verify(sig, body)
    assert base64.b64encode(sig)  # standard base64 is what goes into X-MEN-Signature


def test_keygen_keeps_an_existing_key(tmp_path: Path) -> None:
    ks = Keystore(tmp_path)
    first = ks.generate("d", algorithm=KeyAlgorithm.ED25519)
    second = ks.generate("d", algorithm=KeyAlgorithm.RSA3072)
    assert first == second


def test_encrypted_key_needs_the_passphrase_and_never_shows_it(tmp_path: Path) -> None:
    ks = Keystore(tmp_path)
    ks.generate("d", algorithm=KeyAlgorithm.ECDSA_P256, passphrase=b"s3cret-pass")
    raw = ks.key_path("d").read_bytes()
    assert b"ENCRYPTED" in raw
    with pytest.raises(UsageProblem) as e1:
        ks.load("d")
    assert e1.value.code == "passphrase-needed"
    with pytest.raises(InvalidData) as e2:
        ks.load("d", passphrase=lambda _n: b"hunter2-nope")
    assert e2.value.code == "bad-device-key"
    assert "hunter2" not in str(e2.value)
    key = ks.load("d", passphrase=lambda _n: b"s3cret-pass")
    assert "s3cret" not in repr(key)
    assert "PRIVATE" not in repr(key)


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    ks = Keystore(tmp_path)
    ks.generate("d", algorithm=KeyAlgorithm.ED25519)
    ks.key_path("d").chmod(0o644)
    with pytest.raises(InvalidData) as e:
        ks.load("d")
    assert e.value.code == "key-permissions"


def test_bad_device_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageProblem):
        Keystore(tmp_path).generate("../escape")


def test_site_init_writes_a_loadable_commented_example(tmp_path: Path) -> None:
    p = tmp_path / "site.toml"
    r = CliRunner().invoke(main, ["site", "init", str(p)])
    assert r.exit_code == 0, r.output
    assert p.read_text().count("#") > 5
    site = load_site(p)
    assert site.mode is Mode.STATIC
    assert [d.name for d in site.devices] == ["pump-01", "pump-02"]
    again = CliRunner().invoke(main, ["site", "init", str(p)])
    assert again.exit_code == 2
    r = CliRunner().invoke(main, ["site", "check", str(p), "--json"])
    assert r.exit_code == 0
    assert json.loads(r.output)["devices"][0]["identity"] == {"mac": "00:11:22:33:44:01"}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (
            'site = "s"\n[[device]]\nname="a"\ndevice_type="t"\nartifact_name="x"\n'
            'identity={m="1"}\naddress="10.0.0.1"\n',
            "address",
        ),
        ('site = "s"\nmode = "sometimes"\n', "sometimes"),
        (
            'site = "s"\n[[device]]\nname="a"\ndevice_type="t"\nartifact_name="x"\nidentity={m="1"}\n'
            '[[device]]\nname="a"\ndevice_type="t"\nartifact_name="x"\nidentity={m="2"}\n',
            "twice",
        ),
        (
            'site = "s"\n[[device]]\nname="a"\ndevice_type="t"\nartifact_name="x"\nidentity={m="1"}\n'
            '[[device]]\nname="b"\ndevice_type="t"\nartifact_name="x"\nidentity={m="1"}\n',
            "same identity",
        ),
        ("site = \n", "TOML"),
    ],
)
def test_bad_site_files_are_refused(tmp_path: Path, text: str, why: str) -> None:
    p = tmp_path / "site.toml"
    p.write_text(text)
    with pytest.raises(UsageProblem) as e:
        load_site(p)
    assert e.value.code == "bad-site-file"
    assert why in e.value.message


def test_write_example_refuses_to_overwrite(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    write_example(p)
    with pytest.raises(UsageProblem):
        write_example(p)
    write_example(p, force=True)
