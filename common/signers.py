"""Who signs: a key file read in-process, or ``ssh-keygen -Y sign`` for agent and FIDO keys.

A `Signer` has a public key and makes armored SSHSIG signatures (STYLE.md practice 8). Secrets
arrive through a callback so the CLI owns prompting; they never appear in argv, messages or logs.

- `KeyFileSigner`: an OpenSSH (``openssh-key-v1``) or PEM private key file: Ed25519, ECDSA
  P-256/P-384/P-521, RSA >= 2048 bit (signs rsa-sha2-512). Like ``ssh``, it refuses key files
  that group or others can read.
- `SshKeygenSigner`: runs ``ssh-keygen -Y sign`` (OpenSSH ``PROTOCOL.sshsig``) for keys held by
  ``ssh-agent`` (``SSH_AUTH_SOCK``) or a FIDO token (``sk-`` keys). The message goes through
  stdin; the only arguments are the key's path and the namespace.
"""

from __future__ import annotations

import binascii
import os
import stat
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from gapferry.common.errors import EnvironmentFailure, InvalidData, UsageProblem
from gapferry.common.sshkeys import (
    SshPublicKey,
    WireReader,
    is_certificate_type,
    parse_certificate,
    parse_key_blob,
    parse_public_key,
    put_mpint,
    put_string,
)
from gapferry.common.sshsig import armor, encode_sshsig, parse_armored, signed_data

__all__ = [
    "KeyFileSigner",
    "PassphraseCallback",
    "Signer",
    "SshKeygenSigner",
    "load_signer",
]

PassphraseCallback = Callable[[], bytes]

_MAX_KEY_FILE: Final = 1 << 20
_OPENSSH_BEGIN: Final = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_END: Final = b"-----END OPENSSH PRIVATE KEY-----"
_SIGN_TIMEOUT_S: Final = 120.0  # a FIDO token waits for a touch


@runtime_checkable
class Signer(Protocol):
    """Something that makes SSHSIG signatures with one key."""

    @property
    def public_key(self) -> SshPublicKey: ...

    def sign_sshsig(self, message: bytes, namespace: str) -> bytes:
        """Sign ``message`` for ``namespace``; return the armored SSHSIG."""
        ...


def _read_key_file(path: Path) -> bytes:
    """Read a private key file, refusing group/other-readable files (as OpenSSH does).

    Raises:
        UsageProblem: code ``key-not-found``, ``key-file-permissions`` or ``key-too-large``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise UsageProblem(
            f"cannot open the private key file {path}: {e.strerror}",
            remedy="Pass the path of an existing OpenSSH private key file.",
            code="key-not-found",
        ) from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UsageProblem(
                f"{path} is not a regular file",
                remedy="Pass the path of an OpenSSH private key file.",
                code="key-not-found",
            )
        if st.st_mode & 0o077:
            raise UsageProblem(
                f"private key file {path} has permissions {stat.S_IMODE(st.st_mode):04o}; "
                "it must not be accessible by group or others",
                remedy=f"Run: chmod 600 {path}",
                code="key-file-permissions",
            )
        data = f.read(_MAX_KEY_FILE + 1)
    if len(data) > _MAX_KEY_FILE:
        raise UsageProblem(
            f"{path} is larger than {_MAX_KEY_FILE} bytes; it is not a private key",
            remedy="Pass the path of an OpenSSH private key file.",
            code="key-too-large",
        )
    return data


def _embedded_public_key(data: bytes) -> SshPublicKey | None:
    """The public key stored unencrypted in an ``openssh-key-v1`` file (PROTOCOL.key)."""
    text = data.strip()
    if not (text.startswith(_OPENSSH_BEGIN) and text.endswith(_OPENSSH_END)):
        return None
    body = b"".join(text[len(_OPENSSH_BEGIN) : -len(_OPENSSH_END)].split())
    try:
        raw = binascii.a2b_base64(body, strict_mode=True)
    except binascii.Error:
        return None
    r = WireReader(raw, what="OpenSSH private key", code="bad-key")
    try:
        if r.raw(15) != b"openssh-key-v1\0":
            return None
        r.string(), r.string(), r.string()  # cipher, kdf, kdf options
        if r.u32() != 1:
            return None
        blob = r.string(max_len=16384)
        return parse_key_blob(blob)
    except InvalidData:
        return None


class KeyFileSigner:
    """Signs in-process with a private key file (OpenSSH or PEM format).

    Raises (on construction):
        UsageProblem: codes ``key-not-found``, ``key-file-permissions``, ``passphrase-required``,
            ``bad-passphrase`` (wrong passphrase or damaged file), ``unsupported-key`` (DSA,
            RSA < 2048 bit, a FIDO ``sk-`` key: use `SshKeygenSigner`).
    """

    def __init__(self, path: Path, *, passphrase: PassphraseCallback | None = None) -> None:
        self._path = Path(path)
        data = _read_key_file(self._path)
        embedded = _embedded_public_key(data)
        if embedded is not None and embedded.is_security_key:
            raise UsageProblem(
                f"{self._path} is a FIDO security-key ({embedded.key_type}) handle",
                remedy="Sign through ssh-keygen: pass the key as a .pub path or 'agent:<path>'.",
                code="unsupported-key",
            )
        self._key = self._load(data, passphrase)
        openssh = self._key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        self._public = parse_public_key(openssh.decode("ascii") + " " + self._path.name)

    def _load(
        self, data: bytes, passphrase: PassphraseCallback | None
    ) -> ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
        is_openssh = data.lstrip().startswith(_OPENSSH_BEGIN)

        def load(password: bytes | None) -> object:
            if is_openssh:
                return serialization.load_ssh_private_key(data, password=password)
            return serialization.load_pem_private_key(data, password=password)

        try:
            key = load(None)
        except TypeError as e:
            # cryptography: "Password was not given but private key is encrypted".
            if passphrase is None:
                raise UsageProblem(
                    f"private key {self._path} is protected by a passphrase and no way to "
                    "ask for it was given",
                    remedy="Run interactively, or load the key into ssh-agent and use 'agent:<key.pub>'.",
                    code="passphrase-required",
                ) from e
            try:
                key = load(passphrase())
            except (ValueError, TypeError) as e2:
                raise UsageProblem(
                    f"cannot decrypt private key {self._path}: wrong passphrase or damaged file",
                    remedy="Enter the key's passphrase again.",
                    code="bad-passphrase",
                ) from e2
        except ValueError as e:
            raise UsageProblem(
                f"{self._path} is not a readable OpenSSH or PEM private key",
                remedy="Pass an OpenSSH private key (ssh-keygen -t ed25519).",
                code="unsupported-key",
            ) from e
        except UnsupportedAlgorithm as e:
            raise UsageProblem(
                f"{self._path} holds a key type gapferry cannot use",
                remedy="Use an Ed25519, ECDSA or RSA (>= 2048 bit) key.",
                code="unsupported-key",
            ) from e
        if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name not in (
                "secp256r1",
                "secp384r1",
                "secp521r1",
            ):
                raise UsageProblem(
                    f"{self._path} is an ECDSA key on unsupported curve {key.curve.name}",
                    remedy="Use an Ed25519 or ECDSA P-256/P-384 key.",
                    code="unsupported-key",
                )
            return key
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < 2048:
                raise UsageProblem(
                    f"{self._path} is a {key.key_size}-bit RSA key; at least 2048 bits are required",
                    remedy="Generate a new key: ssh-keygen -t ed25519.",
                    code="unsupported-key",
                )
            return key
        raise UsageProblem(
            f"{self._path} holds a {type(key).__name__}, which gapferry cannot sign with",
            remedy="Use an Ed25519, ECDSA or RSA (>= 2048 bit) key.",
            code="unsupported-key",
        )

    @property
    def public_key(self) -> SshPublicKey:
        return self._public

    def __repr__(self) -> str:
        return f"KeyFileSigner({self._path}, {self._public.key_type} {self._public.fingerprint})"

    def sign_sshsig(self, message: bytes, namespace: str) -> bytes:
        """Sign ``message`` for ``namespace`` with sha512; return the armored SSHSIG."""
        tbs = signed_data(message, namespace=namespace, hash_alg="sha512")
        key = self._key
        key_type = self._public.key_type
        if isinstance(key, ed25519.Ed25519PrivateKey):
            sig = put_string(b"ssh-ed25519") + put_string(key.sign(tbs))
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            digest: hashes.HashAlgorithm = {
                "secp256r1": hashes.SHA256(),
                "secp384r1": hashes.SHA384(),
                "secp521r1": hashes.SHA512(),
            }[key.curve.name]
            r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(digest)))
            sig = put_string(key_type.encode()) + put_string(put_mpint(r) + put_mpint(s))
        else:
            raw = key.sign(tbs, padding.PKCS1v15(), hashes.SHA512())
            sig = put_string(b"rsa-sha2-512") + put_string(raw)
        return armor(
            encode_sshsig(
                public_key_blob=self._public.blob,
                namespace=namespace,
                hash_alg="sha512",
                signature=sig,
            )
        )


class SshKeygenSigner:
    """Signs through ``ssh-keygen -Y sign -f <key> -n <namespace>`` (message on stdin).

    ``key_path`` is a public key (``.pub``), a certificate (``-cert.pub``: the signature then
    carries the certificate) or an ``sk-`` private key handle. With ``require_agent`` the key must
    be in ``ssh-agent`` (``ssh-keygen -U``; ``env`` may name the agent's ``SSH_AUTH_SOCK``,
    default: this process's environment); otherwise ``ssh-keygen`` uses the agent when it holds
    the key and the private key file next to the ``.pub`` if not (it may then prompt on the
    terminal itself: gapferry never sees that passphrase).

    Raises (on construction):
        UsageProblem: code ``key-not-found`` when no public key can be read for ``key_path``.
    """

    def __init__(
        self,
        key_path: Path,
        *,
        require_agent: bool = False,
        ssh_keygen: str = "ssh-keygen",
        timeout_s: float = _SIGN_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._path = Path(key_path)
        self._env = dict(env) if env is not None else None
        self._require_agent = require_agent
        self._ssh_keygen = ssh_keygen
        self._timeout_s = timeout_s
        self._public, self._certified = self._read_public()

    def _read_public(self) -> tuple[SshPublicKey, bool]:
        candidates = [self._path]
        if not self._path.name.endswith(".pub"):
            candidates.insert(0, self._path.with_name(self._path.name + ".pub"))
        for candidate in candidates:
            try:
                data = candidate.read_bytes()[: _MAX_KEY_FILE + 1]
            except OSError:
                continue
            if len(data) > _MAX_KEY_FILE:
                continue
            text = data.decode("utf-8", errors="replace").strip()
            first = text.split(None, 1)[0] if text else ""
            try:
                if is_certificate_type(first):
                    return parse_certificate(text).key, True
                if first and not text.startswith("-----"):
                    return parse_public_key(text), False
            except InvalidData as e:
                raise UsageProblem(
                    f"{candidate} is not a usable OpenSSH public key: {e.message}",
                    remedy="Pass the .pub file of the key held by ssh-agent or the FIDO token.",
                    code="key-not-found",
                ) from e
            embedded = _embedded_public_key(data)
            if embedded is not None:
                return embedded, False
        raise UsageProblem(
            f"no OpenSSH public key found for {self._path}",
            remedy="Pass the .pub file of the key held by ssh-agent or the FIDO token.",
            code="key-not-found",
        )

    @property
    def public_key(self) -> SshPublicKey:
        return self._public

    def __repr__(self) -> str:
        return f"SshKeygenSigner({self._path}, {self._public.key_type} {self._public.fingerprint})"

    def sign_sshsig(self, message: bytes, namespace: str) -> bytes:
        """Run ``ssh-keygen -Y sign``; return its armored signature.

        Raises:
            EnvironmentFailure: code ``ssh-keygen-missing``, ``ssh-keygen-failed`` (key not in
                the agent, token not touched, ...), ``ssh-keygen-timeout``.
        """
        argv = [self._ssh_keygen, "-q", "-Y", "sign", "-f", str(self._path), "-n", namespace]
        if self._require_agent:
            argv.insert(4, "-U")
        try:
            proc = subprocess.run(
                argv,
                input=message,
                capture_output=True,
                timeout=self._timeout_s,
                env=self._env,
                check=False,
            )
        except FileNotFoundError as e:
            raise EnvironmentFailure(
                f"{self._ssh_keygen} was not found",
                remedy="Install OpenSSH (apt-get install openssh-client).",
                code="ssh-keygen-missing",
            ) from e
        except subprocess.TimeoutExpired as e:
            raise EnvironmentFailure(
                f"ssh-keygen did not sign within {self._timeout_s:.0f} s",
                remedy="Touch the security key when it blinks, or check ssh-agent.",
                code="ssh-keygen-timeout",
            ) from e
        if proc.returncode != 0:
            detail = proc.stderr.decode("utf-8", errors="replace").strip()[-500:]
            raise EnvironmentFailure(
                f"ssh-keygen -Y sign with {self._public.fingerprint} failed "
                f"(exit {proc.returncode}): {detail}",
                remedy="Check that the key is loaded (ssh-add -l) or the token is plugged in.",
                code="ssh-keygen-failed",
            )
        # Fail here, not later, if ssh-keygen wrote something that is not a signature.
        parse_armored(proc.stdout, max_bytes=1 << 20)
        return proc.stdout


def load_signer(ref: str, *, passphrase: PassphraseCallback | None = None) -> Signer:
    """Find a signer by reference.

    - ``agent:PATH``: the key whose public key is ``PATH`` must be in ``ssh-agent``.
    - ``PATH.pub`` (or ``-cert.pub``): ``ssh-keygen`` signs (agent if loaded, else the key file).
    - ``PATH`` of an ``sk-`` private key handle: ``ssh-keygen`` signs with the FIDO token.
    - ``PATH`` of any other private key: signed in-process (`KeyFileSigner`).

    Raises:
        UsageProblem: as `KeyFileSigner` / `SshKeygenSigner`.
    """
    if ref.startswith("agent:"):
        return SshKeygenSigner(Path(ref[len("agent:") :]), require_agent=True)
    path = Path(ref)
    if path.name.endswith(".pub"):
        return SshKeygenSigner(path)
    embedded = _embedded_public_key(_read_key_file(path))
    if embedded is not None and embedded.is_security_key:
        return SshKeygenSigner(path)
    return KeyFileSigner(path, passphrase=passphrase)
