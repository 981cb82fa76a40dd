"""Device keys: the identities the Trusted Intermediary holds for air-gapped devices (phase 1).

One private key per device, in ``<root>/<device>.key`` (PKCS#8 PEM, mode 0600, optionally
encrypted with a passphrase) and its public key in ``<root>/<device>.pub``. RSA 3072 is the default
as with the Mender client; ECDSA P-256 and Ed25519 on request. Signatures follow what the server
verifies (shared/mender/server-behaviour.md section 1, step 4): RSA PKCS#1 v1.5 with SHA-256, ECDSA
SHA-256 as ASN.1 DER, Ed25519 over the raw bytes.

Private key bytes and passphrases never leave this module: no ``repr`` shows them, no error quotes
them. Passphrases arrive through a callback, so the CLI decides where they come from (environment
or prompt, never the command line).

Device tokens (ADR 0045): beside an *unencrypted* key, ``<root>/<device>.jwt`` (mode 0600) keeps
the device's last JWT with a binding (a digest of the server URL, identity, public key and tenant
token it was issued for), so a later command reuses it instead of authenticating again. A token
is never cached beside a passphrase-protected key (it would be readable without the passphrase),
is ignored when its binding differs or its mode lets others read it, and is deleted with the key.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import msgspec
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from gapferry.common.atomic import atomic_write_bytes, fsync_dir
from gapferry.common.errors import InvalidData, UsageProblem

__all__ = ["CachedToken", "DeviceKey", "KeyAlgorithm", "Keystore", "PassphraseSource"]

#: Returns the passphrase for a key (by device name), or None for none.
PassphraseSource = Callable[[str], bytes | None]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class CachedToken(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The ``<device>.jwt`` file: a device JWT and what it was issued for (ADR 0045)."""

    binding: str
    token: str


def _read_private(path: Path, limit: int, *, whole: bool) -> bytes | None:
    """The first `limit` bytes of a regular file only its owner may read (with `whole`: only if
    that is all of it), else None. Few syscalls: this runs per device in worker threads."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077 or (whole and st.st_size > limit):
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


class KeyAlgorithm(StrEnum):
    RSA3072 = "rsa3072"
    ECDSA_P256 = "ecdsa-p256"
    ED25519 = "ed25519"


class DeviceKey:
    """A loaded device private key that can sign auth requests. Never prints its secret."""

    __slots__ = ("_key", "name", "public_pem")

    def __init__(self, *, name: str, key: PrivateKey) -> None:
        self.name = name
        self._key = key
        self.public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def __repr__(self) -> str:
        return f"DeviceKey(name={self.name!r})"

    def sign(self, data: bytes) -> bytes:
        """Sign `data` as the Mender server expects for an auth request."""
        key = self._key
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(hashes.SHA256()))  # DER SEQUENCE{r, s}
        return key.sign(data)


def _generate(alg: KeyAlgorithm) -> PrivateKey:
    if alg is KeyAlgorithm.RSA3072:
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if alg is KeyAlgorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


class Keystore:
    """A folder of device keys (created 0700)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _check(self, name: str) -> str:
        if not _NAME.match(name):
            raise UsageProblem(
                f"device name must be 1-100 letters, digits, '.', '_' or '-', found {name!r}",
                remedy="rename the device in the site file",
                code="bad-device-name",
            )
        return name

    def key_path(self, name: str) -> Path:
        return self.root / f"{self._check(name)}.key"

    def pub_path(self, name: str) -> Path:
        return self.root / f"{self._check(name)}.pub"

    def token_path(self, name: str) -> Path:
        return self.root / f"{self._check(name)}.jwt"

    def exists(self, name: str) -> bool:
        return self.key_path(name).exists()

    def is_encrypted(self, name: str) -> bool:
        """Whether the device's private key file is passphrase-protected (False if missing)."""
        try:
            with self.key_path(name).open("rb") as f:
                return b"ENCRYPTED" in f.readline(200)
        except FileNotFoundError:
            return False

    def load_token(self, name: str, *, binding: str) -> str | None:
        """The cached JWT of the device if it was issued for `binding`, else None (ADR 0045).

        A file others may read, an unreadable or foreign file, and any token beside an encrypted
        key (or a key others may read) are ignored: never an error, the device then simply
        authenticates (and loading its key reports what is wrong with the key).
        """
        raw = _read_private(self.token_path(name), 64 * 1024, whole=True)
        key_head = _read_private(self.key_path(name), 200, whole=False)
        if raw is None or key_head is None or b"ENCRYPTED" in key_head.split(b"\n", 1)[0]:
            return None
        try:
            cached = msgspec.json.decode(raw, type=CachedToken)
        except msgspec.DecodeError:
            return None
        return cached.token if cached.binding == binding and cached.token else None

    def save_token(self, name: str, token: str, *, binding: str) -> bool:
        """Cache `token` (0600, atomically) unless the key is encrypted; whether it was cached."""
        if not self.exists(name) or self.is_encrypted(name):
            return False
        data = msgspec.json.encode(CachedToken(binding=binding, token=token))
        # A cache: written whole under a temporary name (0600 from creation) and renamed, but not
        # fsynced. Lost or damaged after a power cut, it is ignored and the device authenticates.
        path = self.token_path(name)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=f".{path.name}.", suffix=".part")
        tmp = Path(tmp_name)  # mkstemp: O_EXCL, mode 0600 from creation
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            # Renaming over an existing file makes ext4 flush the new file first (auto_da_alloc),
            # which is an fsync in effect; the cache does not need it.
            path.unlink(missing_ok=True)
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return True

    def remove_token(self, name: str) -> bool:
        """Delete the cached JWT, if any. Returns whether it existed."""
        try:
            self.token_path(name).unlink()
        except FileNotFoundError:
            return False
        fsync_dir(self.root)
        return True

    def generate(
        self,
        name: str,
        *,
        algorithm: KeyAlgorithm = KeyAlgorithm.RSA3072,
        passphrase: bytes | None = None,
    ) -> str:
        """Create the device's key pair unless it exists; return the public key PEM.

        Idempotent: an existing key is kept (never overwritten), so a re-run cannot orphan a key
        the server already knows.
        """
        path = self.key_path(name)
        if path.exists():
            return self.public_pem(name)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = _generate(algorithm)
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
        pub = DeviceKey(name=name, key=key).public_pem
        atomic_write_bytes(self.pub_path(name), pub.encode(), mode=0o644)
        atomic_write_bytes(path, pem, mode=0o600)
        return pub

    def public_pem(self, name: str) -> str:
        """The public key (SubjectPublicKeyInfo PEM), exportable."""
        try:
            return self.pub_path(name).read_text()
        except FileNotFoundError as e:
            raise UsageProblem(
                f"no key for device {name!r} in {self.root}",
                remedy="run `gapferry device keygen` first",
                code="no-device-key",
            ) from e

    def load(self, name: str, *, passphrase: PassphraseSource | None = None) -> DeviceKey:
        """Load the private key, asking `passphrase` only if the file is encrypted.

        Raises:
            UsageProblem: no key, or an encrypted key and no passphrase.
            InvalidData: the file is not a key, is not 0600, or the passphrase is wrong.
        """
        path = self.key_path(name)
        try:
            st = path.stat()
            raw = path.read_bytes()
        except FileNotFoundError as e:
            raise UsageProblem(
                f"no key for device {name!r} in {self.root}",
                remedy="run `gapferry device keygen` first",
                code="no-device-key",
            ) from e
        if st.st_mode & 0o077:
            raise InvalidData(
                f"device key {path} is readable by others (mode {st.st_mode & 0o777:o}, expected 600)",
                remedy=f"chmod 600 {path}, and consider the key exposed",
                code="key-permissions",
            )
        pw: bytes | None = None
        if b"ENCRYPTED" in raw.split(b"\n", 1)[0]:
            pw = passphrase(name) if passphrase is not None else None
            if not pw:
                raise UsageProblem(
                    f"device key {path} is encrypted and no passphrase was given",
                    remedy="set GAPFERRY_KEY_PASSPHRASE or run interactively to be prompted",
                    code="passphrase-needed",
                )
        try:
            key = serialization.load_pem_private_key(raw, password=pw)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise InvalidData(
                f"device key {path} cannot be loaded (wrong passphrase or not a private key)",
                remedy="check the passphrase; regenerate the key if the file is damaged",
                code="bad-device-key",
            ) from None if pw else e
        if not isinstance(
            key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
        ):
            raise InvalidData(
                f"device key {path} is of an unsupported type",
                remedy="use RSA, ECDSA or Ed25519",
                code="bad-device-key",
            )
        return DeviceKey(name=name, key=key)

    def remove(self, name: str) -> bool:
        """Delete the device's key pair and cached token (rotating mode cleanup). Returns whether
        the key pair existed."""
        existed = False
        self.token_path(name).unlink(missing_ok=True)
        for p in (self.key_path(name), self.pub_path(name)):
            try:
                p.unlink()
                existed = True
            except FileNotFoundError:
                pass
        if existed:
            fsync_dir(self.root)
        return existed
