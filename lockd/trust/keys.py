"""Signing keys: generation, cosign-compatible encrypted private keys, public keys, keyids.

Private keys are stored the way cosign stores them (sigstore/cosign ``pkg/cosign/keys.go``): a PEM
block ``ENCRYPTED SIGSTORE PRIVATE KEY`` (older files: ``ENCRYPTED COSIGN PRIVATE KEY``) whose body
is the JSON of go-securesystemslib's ``encrypted`` package::

    {"kdf": {"name": "scrypt", "params": {"N": 65536, "r": 8, "p": 1}, "salt": "<b64>"},
     "cipher": {"name": "nacl/secretbox", "nonce": "<b64>"},
     "ciphertext": "<b64>"}

over the PKCS#8 DER of the key. The scrypt output (32 bytes) is the secretbox key. So a key made
by ``lockd keygen`` works with ``cosign sign-blob --key``, and a key made by
``cosign generate-key-pair`` works with ``lockd record --key``.

Public keys are PKIX ``PUBLIC KEY`` PEM blocks; a keyid is the hex SHA-256 of the key's
SubjectPublicKeyInfo DER.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import getpass
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from lockd.errors import InputError, KeyFileError, OutputExistsError
from lockd.fileio import read_capped

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

__all__ = [
    "PrivateKey",
    "PublicKey",
    "decrypt_private_key",
    "encrypt_private_key",
    "generate_private_key",
    "keyid",
    "load_private_key",
    "load_public_key",
    "parse_public_key",
    "public_pem",
    "read_password",
    "sign_bytes",
    "verify_bytes",
    "write_keypair",
]

SIGSTORE_PEM_LABEL = "ENCRYPTED SIGSTORE PRIVATE KEY"
COSIGN_PEM_LABEL = "ENCRYPTED COSIGN PRIVATE KEY"
_ENCRYPTED_LABELS = (SIGSTORE_PEM_LABEL, COSIGN_PEM_LABEL)

# go-securesystemslib's presets: Legacy (2^15), Standard (2^16, cosign's default), OWASP (2^17).
# Nothing else is accepted: N comes from the file, and a huge N makes decryption a memory bomb.
SCRYPT_N = 65536
SCRYPT_R = 8
SCRYPT_P = 1
_ALLOWED_SCRYPT_N = frozenset({2**15, 2**16, 2**17})
_SALT_BYTES = 32
_NONCE_BYTES = 24
_SECRETBOX_KEY_BYTES = 32

_MAX_KEY_FILE_BYTES = 64 * 1024  # a key file is a few hundred bytes
_PEM_LINE = 64  # Go's encoding/pem line width

_CURVE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384"}

_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


# --- keys -------------------------------------------------------------------------------------


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key (cosign's default)."""
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: PrivateKey | PublicKey) -> bytes:
    """The PKIX ``PUBLIC KEY`` PEM of a key (of its public half, for a private key)."""
    public = _public_of(key)
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def keyid(public_key: PublicKey | PrivateKey) -> str:
    """Hex SHA-256 of the key's SubjectPublicKeyInfo DER (of its public half, for a private key)."""
    der = _public_of(public_key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _public_of(key: PrivateKey | PublicKey) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        return key.public_key()
    return key


def _ec_hash(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    try:
        return _CURVE_HASHES[curve.name]()
    except KeyError:
        raise ValueError(f"unsupported ECDSA curve {curve.name}") from None


def sign_bytes(key: PrivateKey, data: bytes) -> bytes:
    """Sign ``data``: ECDSA gives a DER signature over SHA-256 (P-256) or SHA-384 (P-384);
    Ed25519 gives its raw 64-byte signature."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(_ec_hash(key.curve)))


def verify_bytes(key: PublicKey, sig: bytes, data: bytes) -> bool:
    """True when ``sig`` is a valid signature of ``data`` by ``key`` (see :func:`sign_bytes`)."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, data)
        else:
            key.verify(sig, data, ec.ECDSA(_ec_hash(key.curve)))
    except (InvalidSignature, ValueError):
        return False
    return True


# --- PEM --------------------------------------------------------------------------------------


def _pem_block(data: bytes, source: str, what: str) -> tuple[str, bytes]:
    """The label and DER body of the first PEM block in ``data``."""
    begin = _PEM_BEGIN.search(data)
    if begin is None:
        if not data.strip():
            raise KeyFileError(f"{source}: the file is empty; expected a PEM {what}")
        raise KeyFileError(f"{source}: not a PEM file (no '-----BEGIN' line); expected a {what}")
    label = begin.group(1).decode("ascii")
    end_marker = f"-----END {label}-----".encode("ascii")
    end = data.find(end_marker, begin.end())
    if end < 0:
        raise KeyFileError(
            f"{source}: truncated PEM: no '-----END {label}-----' line; "
            f"the file was cut short, copy it again"
        )
    text = b"".join(data[begin.end() : end].split())
    try:
        body = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise KeyFileError(f"{source}: PEM block {label!r} is not valid base64: {e}") from e
    return label, body


def _pem_encode(label: str, body: bytes) -> bytes:
    """Encode like Go's ``pem.Encode``: 64-column base64 lines."""
    b64 = base64.b64encode(body)
    lines = [b64[i : i + _PEM_LINE] + b"\n" for i in range(0, len(b64), _PEM_LINE)]
    return (
        f"-----BEGIN {label}-----\n".encode()
        + b"".join(lines)
        + f"-----END {label}-----\n".encode()
    )


# --- private keys -----------------------------------------------------------------------------


def encrypt_private_key(key: PrivateKey, password: bytes) -> bytes:
    """The ``ENCRYPTED SIGSTORE PRIVATE KEY`` PEM of ``key``, as ``cosign generate-key-pair``
    writes it (scrypt N=65536, r=8, p=1; nacl/secretbox). An empty password is allowed."""
    import nacl.secret
    import nacl.utils

    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt = os.urandom(_SALT_BYTES)
    nonce = nacl.utils.random(_NONCE_BYTES)
    box_key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    ciphertext = nacl.secret.SecretBox(box_key).encrypt(der, nonce).ciphertext
    document = {
        "kdf": {
            "name": "scrypt",
            "params": {"N": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
            "salt": base64.b64encode(salt).decode("ascii"),
        },
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode("ascii")},
        "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
    }
    # Field order and compact separators as Go's json.Marshal writes the struct.
    body = json.dumps(document, separators=(",", ":")).encode("utf-8")
    return _pem_encode(SIGSTORE_PEM_LABEL, body)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=_SECRETBOX_KEY_BYTES, n=n, r=r, p=p).derive(password)


def decrypt_private_key(pem: bytes, password: bytes, source: str) -> PrivateKey:
    """Read a private key from PEM bytes.

    Accepts cosign's ``ENCRYPTED SIGSTORE PRIVATE KEY`` and ``ENCRYPTED COSIGN PRIVATE KEY``
    blocks, and, for convenience, an unencrypted PKCS#8 ``PRIVATE KEY`` block (``password`` is then
    ignored). The key must be ECDSA P-256 or P-384, or Ed25519.

    Raises:
        KeyFileError: malformed PEM, JSON, base64 or fields; an unsupported KDF, cipher or
            scrypt parameters; an unsupported key type; or the wrong password. The message names
            ``source``.
    """
    label, body = _pem_block(pem, source, "private key")
    if label in _ENCRYPTED_LABELS:
        der = _decrypt_cosign_body(body, password, source)
        kind = "encrypted"
    elif label == "PRIVATE KEY":
        der = body
        kind = "PKCS#8"
    elif "PUBLIC KEY" in label:
        raise KeyFileError(
            f"{source}: this is a public key ({label}); give the private key (the .key file)"
        )
    else:
        raise KeyFileError(
            f"{source}: unsupported PEM block {label!r}; expected {SIGSTORE_PEM_LABEL!r} "
            f"(from 'lockd keygen' or 'cosign generate-key-pair') or an unencrypted 'PRIVATE KEY'"
        )
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{source}: the {kind} key is not a valid PKCS#8 private key") from e
    return _check_private_key(key, source)


def _check_private_key(key: object, source: str) -> PrivateKey:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name in _CURVE_HASHES:
            return key
        raise KeyFileError(
            f"{source}: unsupported ECDSA curve {key.curve.name}; lockd signs with P-256, "
            f"P-384 or Ed25519 keys (make one with 'lockd keygen')"
        )
    raise KeyFileError(
        f"{source}: unsupported private key type {type(key).__name__}; lockd signs with "
        f"ECDSA P-256, P-384 or Ed25519 keys (make one with 'lockd keygen')"
    )


def _decrypt_cosign_body(body: bytes, password: bytes, source: str) -> bytes:
    import nacl.exceptions
    import nacl.secret

    try:
        doc = json.loads(body)
    except UnicodeDecodeError:  # its message would show a byte of the key
        raise KeyFileError(f"{source}: the encrypted key's body is not UTF-8 JSON") from None
    except ValueError as e:  # json's message says where, never what
        raise KeyFileError(f"{source}: the encrypted key's body is not valid JSON: {e}") from e
    kdf = _field(doc, "kdf", dict, source, "")
    kdf_name = _field(kdf, "name", str, source, "kdf.")
    if kdf_name != "scrypt":
        raise KeyFileError(f"{source}: unsupported kdf {kdf_name!r} (expected 'scrypt')")
    params = _field(kdf, "params", dict, source, "kdf.")
    n = _field(params, "N", int, source, "kdf.params.")
    r = _field(params, "r", int, source, "kdf.params.")
    p = _field(params, "p", int, source, "kdf.params.")
    if n not in _ALLOWED_SCRYPT_N or r != SCRYPT_R or p != SCRYPT_P:
        raise KeyFileError(
            f"{source}: unsupported scrypt parameters N={n}, r={r}, p={p}; lockd accepts "
            f"N = 2^15, 2^16 or 2^17 with r=8, p=1 (what cosign writes)"
        )
    salt = _b64_field(kdf, "salt", source, "kdf.")
    cipher = _field(doc, "cipher", dict, source, "")
    cipher_name = _field(cipher, "name", str, source, "cipher.")
    if cipher_name != "nacl/secretbox":
        raise KeyFileError(
            f"{source}: unsupported cipher {cipher_name!r} (expected 'nacl/secretbox')"
        )
    nonce = _b64_field(cipher, "nonce", source, "cipher.")
    if len(nonce) != _NONCE_BYTES:
        raise KeyFileError(
            f"{source}: cipher.nonce is {len(nonce)} bytes; nacl/secretbox needs {_NONCE_BYTES}"
        )
    ciphertext = _b64_field(doc, "ciphertext", source, "")
    box_key = _scrypt(password, salt, n, r, p)
    try:
        plaintext: bytes = nacl.secret.SecretBox(box_key).decrypt(ciphertext, nonce)
    except nacl.exceptions.CryptoError as e:
        raise KeyFileError(f"{source}: wrong password (or corrupted key)") from e
    return plaintext


def _field(doc: Any, name: str, kind: type, source: str, where: str) -> Any:
    if not isinstance(doc, dict):
        raise KeyFileError(
            f"{source}: the encrypted key's {where.rstrip('.') or 'body'} is not a JSON object"
        )
    if name not in doc:
        raise KeyFileError(f"{source}: the encrypted key has no {where}{name} field")
    value = doc[name]
    # bool is an int in Python, never a valid scrypt parameter.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise KeyFileError(
            f"{source}: the encrypted key's {where}{name} is not a JSON {_json_kind(kind)}"
        )
    return value


def _json_kind(kind: type) -> str:
    return {dict: "object", str: "string", int: "integer"}.get(kind, kind.__name__)


def _b64_field(doc: Any, name: str, source: str, where: str) -> bytes:
    text: str = _field(doc, name, str, source, where)
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError) as e:
        raise KeyFileError(f"{source}: the encrypted key's {where}{name} is not base64") from e


def _read_key_file(path: Path) -> bytes:
    return read_capped(path, limit=_MAX_KEY_FILE_BYTES, what="key", error=KeyFileError)


def load_private_key(path: Path, password: bytes) -> PrivateKey:
    """Read and decrypt the private key file at ``path`` (see :func:`decrypt_private_key`).

    Raises:
        KeyFileError: the file is missing, unreadable or malformed, or the password is wrong.
    """
    return decrypt_private_key(_read_key_file(path), password, str(path))


# --- public keys ------------------------------------------------------------------------------


def parse_public_key(pem: bytes, source: str) -> PublicKey:
    """Parse a PKIX ``PUBLIC KEY`` PEM: ECDSA P-256 or P-384, or Ed25519.

    Raises:
        KeyFileError: not a PEM public key, a private key, or an unsupported key type (RSA…).
    """
    label, body = _pem_block(pem, source, "public key")
    if "PRIVATE KEY" in label:
        raise KeyFileError(
            f"{source}: this is a private key ({label}); give the public key (the .pub file)"
        )
    if label != "PUBLIC KEY":
        raise KeyFileError(
            f"{source}: unsupported PEM block {label!r}; expected a 'PUBLIC KEY' "
            f"(the .pub file from 'lockd keygen' or 'cosign generate-key-pair')"
        )
    try:
        key = serialization.load_der_public_key(body)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{source}: not a valid PKIX public key") from e
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVE_HASHES:
        return key
    what = (
        f"ECDSA curve {key.curve.name}"
        if isinstance(key, ec.EllipticCurvePublicKey)
        else f"key type {type(key).__name__.lstrip('_')}"
    )
    raise KeyFileError(
        f"{source}: unsupported {what}; lockd verifies ECDSA P-256, P-384 and Ed25519 keys"
    )


def load_public_key(path: Path) -> PublicKey:
    """Read the public key file at ``path`` (see :func:`parse_public_key`).

    Raises:
        KeyFileError: the file is missing, unreadable, malformed or of an unsupported type.
    """
    return parse_public_key(_read_key_file(path), str(path))


# --- passwords --------------------------------------------------------------------------------


def read_password(*, confirm: bool = False, purpose: str) -> bytes:
    """The key password: ``LOCKD_PASSWORD``, else ``COSIGN_PASSWORD`` (set but empty means the empty
    password, as in cosign), else a prompt when stdin is a terminal (asked twice if ``confirm``).

    ``purpose`` completes the prompt, e.g. ``"the private key lockd.key"``.

    Raises:
        InputError: no password source, or the two entries differ.
    """
    for name in ("LOCKD_PASSWORD", "COSIGN_PASSWORD"):
        value = os.environ.get(name)
        if value is not None:
            return value.encode("utf-8")
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        raise InputError(
            f"no password: set LOCKD_PASSWORD (or COSIGN_PASSWORD) or run on a terminal "
            f"(the password of {purpose})"
        )
    try:
        first = getpass.getpass(f"Enter password for {purpose}: ")
        if confirm:
            again = getpass.getpass(f"Enter password for {purpose} again: ")
            if again != first:
                raise InputError(f"the passwords for {purpose} do not match; try again")
    except EOFError as e:
        raise InputError(f"no password for {purpose}: the prompt was closed") from e
    return first.encode("utf-8")


# --- key pair files ---------------------------------------------------------------------------


def write_keypair(
    prefix: Path, password: bytes, *, force: bool = False, key: PrivateKey | None = None
) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (encrypted, mode 0600) and ``PREFIX.pub`` for ``key`` (a fresh P-256
    key when not given). Each file is written to a temporary file in the same directory and
    renamed into place; on error no partial files are left.

    Returns:
        The paths of the private and the public key file.

    Raises:
        OutputExistsError: either file exists and ``force`` is false.
        KeyFileError: the files cannot be written.
    """
    key_path = prefix.with_name(prefix.name + ".key")
    pub_path = prefix.with_name(prefix.name + ".pub")
    if not force:
        for path in (key_path, pub_path):
            if path.exists() or path.is_symlink():
                raise OutputExistsError(
                    f"{path}: already exists; choose another --output-key-prefix "
                    f"or pass --force to overwrite it"
                )
    if key is None:
        key = generate_private_key()
    contents = (
        (key_path, encrypt_private_key(key, password), 0o600),
        (pub_path, public_pem(key), 0o644),
    )
    temps: list[tuple[Path, Path]] = []
    replaced: list[Path] = []
    current = key_path
    try:
        for path, data, mode in contents:
            current = path
            temps.append((_write_temp(path, data, mode), path))
        for temp, path in temps:
            current = path
            temp.replace(path)
            replaced.append(path)
    except OSError as e:
        for temp, _ in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        for path in replaced:  # never leave a .key beside a .pub of another key
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise KeyFileError(
            f"{current}: cannot write the key pair: {e.strerror or e}; "
            f"check that {current.parent} exists and is writable"
        ) from e
    return key_path, pub_path


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to a new temporary file beside ``path`` (mkstemp creates it 0600)."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            Path(temp).unlink()
        raise
    return Path(temp)
