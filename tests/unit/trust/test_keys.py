"""lockd.trust.keys: cosign-compatible key files, checked against cosign's format independently."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import nacl.secret
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from lockd.errors import InputError, KeyFileError, OutputExistsError
from lockd.trust import dsse, keys

VECTORS = Path(__file__).resolve().parents[2] / "assets" / "vectors"
COSIGN_KEY = VECTORS / "cosign-empty-password.key"
COSIGN_PUB = VECTORS / "cosign-empty-password.pub"
PASSWORD = b"correct horse"


# --- helpers: cosign's format, read without lockd ------------------------------------------------


def pem_parts(pem: bytes) -> tuple[str, bytes]:
    """Label and body of a single PEM block, parsed by hand."""
    lines = pem.decode("ascii").strip().splitlines()
    assert lines[0].startswith("-----BEGIN ") and lines[0].endswith("-----")
    label = lines[0][len("-----BEGIN ") : -len("-----")]
    assert lines[-1] == f"-----END {label}-----"
    assert all(len(line) <= 64 for line in lines[1:-1])  # Go's encoding/pem line width
    return label, base64.b64decode("".join(lines[1:-1]), validate=True)


def make_pem(label: str, body: bytes) -> bytes:
    b64 = base64.b64encode(body).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (
        "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n"
    ).encode()


def independent_decrypt(pem: bytes, password: bytes) -> bytes:
    """Decrypt a cosign key following cosign's rules: scrypt → nacl/secretbox → PKCS#8 DER."""
    label, body = pem_parts(pem)
    assert label == "ENCRYPTED SIGSTORE PRIVATE KEY"
    doc = json.loads(body)
    assert doc["kdf"]["name"] == "scrypt"
    assert doc["cipher"]["name"] == "nacl/secretbox"
    params = doc["kdf"]["params"]
    box_key = hashlib.scrypt(
        password,
        salt=base64.b64decode(doc["kdf"]["salt"]),
        n=params["N"],
        r=params["r"],
        p=params["p"],
        maxmem=256 * 1024 * 1024,
        dklen=32,
    )
    nonce = base64.b64decode(doc["cipher"]["nonce"])
    plaintext: bytes = nacl.secret.SecretBox(box_key).decrypt(
        base64.b64decode(doc["ciphertext"]), nonce
    )
    return plaintext


def spki(key: keys.PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return keys.generate_private_key()


@pytest.fixture(scope="module")
def encrypted(p256: ec.EllipticCurvePrivateKey) -> bytes:
    """One encrypted key for the module: scrypt N=65536 costs ~0.1-0.3 s per use."""
    return keys.encrypt_private_key(p256, PASSWORD)


def needs_vectors() -> None:
    """The cosign vectors live in tests/assets/vectors: missing ones are a broken checkout."""
    assert COSIGN_KEY.is_file(), COSIGN_KEY
    assert COSIGN_PUB.is_file(), COSIGN_PUB


# --- generation, encryption ------------------------------------------------------------------


def test_generate_is_p256() -> None:
    key = keys.generate_private_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"


def test_encrypted_key_has_cosign_layout(encrypted: bytes) -> None:
    label, body = pem_parts(encrypted)
    assert label == "ENCRYPTED SIGSTORE PRIVATE KEY"
    doc = json.loads(body)
    assert list(doc) == ["kdf", "cipher", "ciphertext"]
    assert list(doc["kdf"]) == ["name", "params", "salt"]
    assert doc["kdf"]["name"] == "scrypt"
    assert doc["kdf"]["params"] == {"N": 65536, "r": 8, "p": 1}
    assert list(doc["kdf"]["params"]) == ["N", "r", "p"]
    assert len(base64.b64decode(doc["kdf"]["salt"], validate=True)) == 32
    assert doc["cipher"]["name"] == "nacl/secretbox"
    assert len(base64.b64decode(doc["cipher"]["nonce"], validate=True)) == 24
    assert b" " not in body  # compact, as Go's json.Marshal writes it


def test_encrypted_key_decrypts_independently(
    encrypted: bytes, p256: ec.EllipticCurvePrivateKey
) -> None:
    der = independent_decrypt(encrypted, PASSWORD)
    loaded = serialization.load_der_private_key(der, password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.private_numbers() == p256.private_numbers()


def test_encrypt_decrypt_round_trip(encrypted: bytes, p256: ec.EllipticCurvePrivateKey) -> None:
    key = keys.decrypt_private_key(encrypted, PASSWORD, "k.key")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.private_numbers() == p256.private_numbers()


def test_legacy_cosign_label_accepted(encrypted: bytes, p256: ec.EllipticCurvePrivateKey) -> None:
    _, body = pem_parts(encrypted)
    legacy = make_pem("ENCRYPTED COSIGN PRIVATE KEY", body)
    key = keys.decrypt_private_key(legacy, PASSWORD, "old.key")
    assert keys.keyid(key.public_key()) == keys.keyid(p256.public_key())


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(ec.generate_private_key(ec.SECP256R1()), id="p256"),
        pytest.param(ed25519.Ed25519PrivateKey.generate(), id="ed25519"),
    ],
)
def test_unencrypted_pkcs8_accepted(key: keys.PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    loaded = keys.decrypt_private_key(pem, b"ignored", "plain.pem")
    assert keys.keyid(loaded.public_key()) == keys.keyid(key.public_key())


# --- the cosign vector -------------------------------------------------------------------------


def test_cosign_vector_decrypts_to_its_public_key() -> None:
    needs_vectors()
    key = keys.load_private_key(COSIGN_KEY, b"")
    pub = keys.load_public_key(COSIGN_PUB)
    assert spki(key.public_key()) == spki(pub)
    assert keys.public_pem(key) == keys.public_pem(pub)
    # and the vector decrypts by hand, too
    der = independent_decrypt(COSIGN_KEY.read_bytes(), b"")
    loaded = serialization.load_der_private_key(der, password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert spki(loaded.public_key()) == spki(pub)


def test_cosign_vector_signs_and_verifies() -> None:
    needs_vectors()
    key = keys.load_private_key(COSIGN_KEY, b"")
    pub = keys.load_public_key(COSIGN_PUB)
    data = b"blob to sign"
    sig = keys.sign_bytes(key, data)
    assert keys.verify_bytes(pub, sig, data)
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))  # what cosign verify-blob checks
    envelope = dsse.sign(b'{"_type": "x"}', "application/vnd.in-toto+json", key)
    assert dsse.verify(envelope, [pub]) == [keys.keyid(pub)]


# --- public keys, keyids, signatures ---------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(ec.generate_private_key(ec.SECP256R1()), id="p256"),
        pytest.param(ec.generate_private_key(ec.SECP384R1()), id="p384"),
        pytest.param(ed25519.Ed25519PrivateKey.generate(), id="ed25519"),
    ],
)
def test_public_key_round_trip_and_signatures(key: keys.PrivateKey) -> None:
    pem = keys.public_pem(key)
    pub = keys.parse_public_key(pem, "k.pub")
    assert keys.keyid(pub) == hashlib.sha256(spki(key.public_key())).hexdigest()
    sig = keys.sign_bytes(key, b"data")
    assert keys.verify_bytes(pub, sig, b"data")
    assert not keys.verify_bytes(pub, sig, b"date")
    assert not keys.verify_bytes(pub, b"not a signature", b"data")


def test_p384_signs_over_sha384() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    sig = keys.sign_bytes(key, b"data")
    key.public_key().verify(sig, b"data", ec.ECDSA(hashes.SHA384()))


def test_load_public_key_from_file(tmp_path: Path, p256: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "k.pub"
    path.write_bytes(keys.public_pem(p256))
    assert keys.keyid(keys.load_public_key(path)) == keys.keyid(p256.public_key())


# --- bad inputs ---------------------------------------------------------------------------------


def _with_doc(pem: bytes, change: Callable[[dict[str, object]], None]) -> bytes:
    _, body = pem_parts(pem)
    doc = json.loads(body)
    change(doc)
    return make_pem("ENCRYPTED SIGSTORE PRIVATE KEY", json.dumps(doc).encode())


def _set(path: str, value: object) -> Callable[[dict[str, object]], None]:
    def change(doc: dict[str, object]) -> None:
        *parents, last = path.split(".")
        node: dict[str, object] = doc
        for name in parents:
            child = node[name]
            assert isinstance(child, dict)
            node = child
        node[last] = value

    return change


def _delete(path: str) -> Callable[[dict[str, object]], None]:
    def change(doc: dict[str, object]) -> None:
        *parents, last = path.split(".")
        node: dict[str, object] = doc
        for name in parents:
            child = node[name]
            assert isinstance(child, dict)
            node = child
        del node[last]

    return change


def _rsa_public_pem() -> bytes:
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


PRIVATE_CASES: list[tuple[str, Callable[[bytes], bytes], bytes, str]] = [
    # (id, make file content from a valid encrypted PEM, password, message fragment)
    ("empty", lambda pem: b"", PASSWORD, "the file is empty"),
    ("not-pem", lambda pem: b"hello\n", PASSWORD, "not a PEM file"),
    ("truncated-pem", lambda pem: pem[: len(pem) // 2], PASSWORD, "truncated PEM"),
    (
        "wrong-label",
        lambda pem: make_pem("CERTIFICATE", pem_parts(pem)[1]),
        PASSWORD,
        "unsupported PEM block 'CERTIFICATE'",
    ),
    (
        "public-key-given",
        lambda pem: keys.public_pem(keys.generate_private_key()),
        PASSWORD,
        "this is a public key",
    ),
    (
        "bad-pem-base64",
        lambda pem: pem.replace(b"\n", b"\n!!", 1),
        PASSWORD,
        "not valid base64",
    ),
    (
        "body-not-json",
        lambda pem: make_pem("ENCRYPTED SIGSTORE PRIVATE KEY", b"{not json"),
        PASSWORD,
        "not valid JSON",
    ),
    (
        "body-not-object",
        lambda pem: make_pem("ENCRYPTED SIGSTORE PRIVATE KEY", b"[1, 2]"),
        PASSWORD,
        "is not a JSON object",
    ),
    ("wrong-kdf", lambda pem: _with_doc(pem, _set("kdf.name", "pbkdf2")), PASSWORD, "kdf 'pbkdf2'"),
    (
        "wrong-cipher",
        lambda pem: _with_doc(pem, _set("cipher.name", "aes-gcm")),
        PASSWORD,
        "unsupported cipher 'aes-gcm'",
    ),
    (
        "huge-N",
        lambda pem: _with_doc(pem, _set("kdf.params.N", 2**20)),
        PASSWORD,
        "unsupported scrypt parameters N=1048576",
    ),
    (
        "other-r",
        lambda pem: _with_doc(pem, _set("kdf.params.r", 1)),
        PASSWORD,
        "unsupported scrypt parameters",
    ),
    (
        "N-not-int",
        lambda pem: _with_doc(pem, _set("kdf.params.N", "65536")),
        PASSWORD,
        "kdf.params.N is not a JSON integer",
    ),
    (
        "bad-salt-base64",
        lambda pem: _with_doc(pem, _set("kdf.salt", "***")),
        PASSWORD,
        "kdf.salt is not base64",
    ),
    (
        "short-nonce",
        lambda pem: _with_doc(pem, _set("cipher.nonce", base64.b64encode(b"x" * 12).decode())),
        PASSWORD,
        "cipher.nonce is 12 bytes",
    ),
    (
        "no-ciphertext",
        lambda pem: _with_doc(pem, _delete("ciphertext")),
        PASSWORD,
        "no ciphertext field",
    ),
    ("no-kdf", lambda pem: _with_doc(pem, _delete("kdf")), PASSWORD, "no kdf field"),
    ("wrong-password", lambda pem: pem, b"wrong", "wrong password (or corrupted key)"),
]


@pytest.mark.parametrize(
    ("make", "password", "fragment"),
    [pytest.param(make, pw, frag, id=case_id) for case_id, make, pw, frag in PRIVATE_CASES],
)
def test_bad_private_key(
    tmp_path: Path,
    encrypted: bytes,
    make: Callable[[bytes], bytes],
    password: bytes,
    fragment: str,
) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(make(encrypted))
    with pytest.raises(KeyFileError) as info:
        keys.load_private_key(path, password)
    assert str(info.value).startswith(f"{path}: ")
    assert fragment in str(info.value)


def test_missing_private_key_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(KeyFileError, match="no such key file") as info:
        keys.load_private_key(path, PASSWORD)
    assert str(path) in str(info.value)


def test_unreadable_key_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read the key file") as info:
        keys.load_private_key(tmp_path, PASSWORD)
    assert str(tmp_path) in str(info.value)


def test_private_key_of_unsupported_type() -> None:
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(KeyFileError, match=r"^rsa\.pem: unsupported private key type"):
        keys.decrypt_private_key(pem, b"", "rsa.pem")


PUBLIC_CASES: list[tuple[str, Callable[[], bytes], str]] = [
    ("empty", lambda: b"", "the file is empty"),
    ("garbage", lambda: b"\x00\x01garbage", "not a PEM file"),
    ("rsa", _rsa_public_pem, "unsupported key type RSAPublicKey"),
    (
        "p521",
        lambda: keys.public_pem(ec.generate_private_key(ec.SECP521R1())),
        "unsupported ECDSA curve secp521r1",
    ),
    (
        "private-key-given",
        lambda: make_pem("ENCRYPTED SIGSTORE PRIVATE KEY", b"{}"),
        "this is a private key",
    ),
    ("truncated", lambda: keys.public_pem(keys.generate_private_key())[:60], "truncated PEM"),
    ("not-a-key", lambda: make_pem("PUBLIC KEY", b"\x30\x03\x02\x01\x01"), "not a valid PKIX"),
    ("certificate", lambda: make_pem("CERTIFICATE", b"\x30\x00"), "unsupported PEM block"),
]


@pytest.mark.parametrize(
    ("make", "fragment"),
    [pytest.param(make, frag, id=case_id) for case_id, make, frag in PUBLIC_CASES],
)
def test_bad_public_key(tmp_path: Path, make: Callable[[], bytes], fragment: str) -> None:
    path = tmp_path / "bad.pub"
    path.write_bytes(make())
    with pytest.raises(KeyFileError) as info:
        keys.load_public_key(path)
    assert str(info.value).startswith(f"{path}: ")
    assert fragment in str(info.value)


def test_missing_public_key_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pub"
    with pytest.raises(KeyFileError, match="no such key file") as info:
        keys.load_public_key(path)
    assert str(path) in str(info.value)


# --- passwords --------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def no_password_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("LOCKD_PASSWORD", raising=False)
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    return monkeypatch


def test_lockd_password_wins(no_password_env: pytest.MonkeyPatch) -> None:
    no_password_env.setenv("LOCKD_PASSWORD", "from-lockd")
    no_password_env.setenv("COSIGN_PASSWORD", "from-cosign")
    assert keys.read_password(purpose="k.key") == b"from-lockd"


def test_cosign_password_used(no_password_env: pytest.MonkeyPatch) -> None:
    no_password_env.setenv("COSIGN_PASSWORD", "pässword")
    assert keys.read_password(purpose="k.key") == "pässword".encode()


def test_cosign_password_set_empty_means_empty(no_password_env: pytest.MonkeyPatch) -> None:
    no_password_env.setenv("COSIGN_PASSWORD", "")
    no_password_env.setattr(sys, "stdin", _Terminal())  # never prompts
    assert keys.read_password(purpose="k.key") == b""


def test_no_password_and_no_terminal(no_password_env: pytest.MonkeyPatch) -> None:
    no_password_env.setattr(sys, "stdin", io.StringIO("secret\n"))
    with pytest.raises(InputError, match=r"^no password: set LOCKD_PASSWORD .*k\.key"):
        keys.read_password(purpose="k.key")


def test_prompt_confirmation_mismatch(no_password_env: pytest.MonkeyPatch) -> None:
    answers = iter(["one", "two"])
    no_password_env.setattr(sys, "stdin", _Terminal())
    no_password_env.setattr("getpass.getpass", lambda prompt="": next(answers))
    with pytest.raises(InputError, match="do not match"):
        keys.read_password(confirm=True, purpose="the new key")


def test_prompt_confirmation_match(no_password_env: pytest.MonkeyPatch) -> None:
    prompts: list[str] = []

    def ask(prompt: str = "") -> str:
        prompts.append(prompt)
        return "same"

    no_password_env.setattr(sys, "stdin", _Terminal())
    no_password_env.setattr("getpass.getpass", ask)
    assert keys.read_password(confirm=True, purpose="the new key") == b"same"
    assert len(prompts) == 2
    assert all("the new key" in prompt for prompt in prompts)


# --- key pair files ---------------------------------------------------------------------------


def test_write_keypair(tmp_path: Path, p256: ec.EllipticCurvePrivateKey) -> None:
    key_path, pub_path = keys.write_keypair(tmp_path / "cosign", PASSWORD, key=p256)
    assert (key_path, pub_path) == (tmp_path / "cosign.key", tmp_path / "cosign.pub")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert spki(keys.load_public_key(pub_path)) == spki(p256.public_key())
    der = independent_decrypt(key_path.read_bytes(), PASSWORD)
    assert serialization.load_der_private_key(der, None).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == spki(p256.public_key())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cosign.key", "cosign.pub"]


@pytest.mark.parametrize("existing", ["lockd.key", "lockd.pub"])
def test_write_keypair_refuses_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="already exists") as info:
        keys.write_keypair(tmp_path / "lockd", PASSWORD)
    assert str(tmp_path / existing) in str(info.value)
    assert (tmp_path / existing).read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == [existing]


def test_write_keypair_force_overwrites(tmp_path: Path) -> None:
    (tmp_path / "lockd.key").write_bytes(b"old")
    (tmp_path / "lockd.pub").write_bytes(b"old")
    key = ed25519.Ed25519PrivateKey.generate()
    key_path, pub_path = keys.write_keypair(tmp_path / "lockd", b"", force=True, key=key)
    assert keys.keyid(keys.load_public_key(pub_path)) == keys.keyid(key.public_key())
    assert keys.keyid(keys.load_private_key(key_path, b"").public_key()) == keys.keyid(
        key.public_key()
    )
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_write_keypair_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot write the key pair"):
        keys.write_keypair(tmp_path / "missing" / "lockd", PASSWORD)
    assert not (tmp_path / "missing").exists()


def test_write_keypair_failing_midway_leaves_nothing(tmp_path: Path) -> None:
    # the .pub cannot be renamed into place (a non-empty directory sits there): even as root
    blocker = tmp_path / "lockd.pub"
    blocker.mkdir()
    (blocker / "keep").write_text("x")
    with pytest.raises(KeyFileError, match="cannot write the key pair"):
        keys.write_keypair(tmp_path / "lockd", PASSWORD, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lockd.pub"]
    assert (blocker / "keep").read_text() == "x"


def _windows(text: str, width: int = 8) -> set[str]:
    return {text[i : i + width] for i in range(len(text) - width + 1)}


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (
            lambda body: body[:40] + "!" + body[40:],
            "PEM block 'PRIVATE KEY' is not valid base64: Only base64 data is allowed",
        ),
        (lambda body: body[:-8] + "AAAA", "the PKCS#8 key is not a valid PKCS#8 private key"),
    ],
)
def test_a_bad_unencrypted_private_key_shows_no_part_of_itself(
    tmp_path: Path, corrupt: Callable[[str], str], message: str
) -> None:
    """The key is secret: an error names the file and what is wrong, never its content."""
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    body = "".join(pem.splitlines()[1:-1])
    path = tmp_path / "plain.key"
    path.write_text(f"-----BEGIN PRIVATE KEY-----\n{corrupt(body)}\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError) as raised:
        keys.load_private_key(path, b"")
    assert str(raised.value) == f"{path}: {message}"
    assert not _windows(body) & _windows(str(raised.value).removeprefix(str(path)))


def test_an_encrypted_key_body_not_utf8_shows_none_of_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(make_pem("ENCRYPTED SIGSTORE PRIVATE KEY", b'{"kdf": "\xc3\x28secret"}'))
    with pytest.raises(KeyFileError) as raised:
        keys.load_private_key(path, PASSWORD)
    assert str(raised.value) == f"{path}: the encrypted key's body is not UTF-8 JSON"
