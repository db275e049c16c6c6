"""Signed checkpoints: the C2SP ``tlog-checkpoint`` body in a C2SP ``signed-note``, with
Ed25519 keys named and identified as c2sp.org/signed-note says. Pure: no I/O.

A checkpoint body is three lines and optional extension lines::

    <origin>
    <tree size, decimal>
    <root hash, base64>
    [<extension line>...]

A signed note is a body ending in a newline, a blank line, and signature lines
``— <key name> <base64(key ID (4 bytes) || signature)>``. An Ed25519 key's ID is the first 4
bytes of ``SHA-256(name || 0x0A || 0x01 || public key)``; a verifier key is written
``<name>+<hex key ID>+<base64(0x01 || public key)>`` and a signer key (what ``lockd keygen
--log-key`` writes) ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>``, both exactly as
Go's ``golang.org/x/mod/sumdb/note`` reads them. Signatures from unknown keys are ignored; at
least one known key must sign, and a known key's bad signature refuses the whole note.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from lockd.errors import InputError, LockdError
from lockd.trust.merkle import HASH_SIZE, MAX_SIZE, ProofError, verify_consistency

ALG_ED25519 = 0x01
SIGNATURE_PREFIX = "— "  # U+2014 EM DASH, then a space
MAX_NOTE_BYTES = 64 * 1024  # a checkpoint is a few hundred bytes; cosignatures add ~100 each
MAX_SIGNATURES = 100  # as Go's note.Open
MAX_NAME_CHARS = 256

__all__ = [
    "ALG_ED25519",
    "MAX_NOTE_BYTES",
    "Checkpoint",
    "LogRewrittenError",
    "LogSigner",
    "LogVerifier",
    "NoteError",
    "NoteSignature",
    "NoteVerificationError",
    "OpenedNote",
    "check_extension",
    "key_id",
    "open_checkpoint",
    "open_note",
    "parse_checkpoint",
    "sign_note",
    "valid_name",
]


class NoteError(InputError):
    """A note, checkpoint or key is malformed (exit 2)."""


class NoteVerificationError(LockdError):
    """A well-formed note is not signed by a trusted key, or a trusted key's signature on it is
    bad (exit 1)."""

    exit_code = 1


def valid_name(name: str) -> bool:
    """A key name: non-empty, no Unicode space, no ``+``, no control character (signed-note)."""
    return (
        0 < len(name) <= MAX_NAME_CHARS
        and "+" not in name
        and not any(c.isspace() or unicodedata.category(c) == "Cc" for c in name)
    )


def key_id(name: str, public_key: bytes) -> bytes:
    """The Ed25519 key ID: the first 4 bytes of ``SHA-256(name || 0x0A || 0x01 || key)``."""
    return hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key
    ).digest()[:4]


def _b64(text: str, what: str, *, secret: bool = False) -> bytes:
    """``secret``: the text is a private key's, so the error never shows it."""
    shown = "the key" if secret else repr(text[:80])
    if not re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", text) or len(text) % 4:
        raise NoteError(f"{what}: {shown} is not standard base64")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise NoteError(f"{what}: {shown} is not standard base64") from None


def _key_fields(text: str, fields: int, what: str) -> list[str]:
    parts = text.strip().split("+", fields - 1)
    if len(parts) != fields or not all(parts):
        raise NoteError(f"{what}: give {_FORMS[what]}")
    return parts


_FORMS = {
    "verifier key": "<name>+<8 hex digits>+<base64 key>, as `lockd keygen --log-key` prints",
    "log signer key": "PRIVATE+KEY+<name>+<8 hex digits>+<base64 key>, as `lockd keygen "
    "--log-key` writes",
}


def _parse_key(
    name: str, hex_id: str, material: str, what: str, *, secret: bool = False
) -> tuple[bytes, bytes]:
    """The key ID and the raw 32 bytes after the algorithm byte. ``secret``: a private key's
    fields, which no error shows: a '+' in its base64 shifts the fields, so any of them may
    hold part of the seed."""
    if not valid_name(name):
        shown = "" if secret else f" {name[:80]!r}"
        raise NoteError(f"{what}: the name{shown} is empty or holds a space or a '+'")
    if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
        shown = "" if secret else f" {hex_id[:80]!r}"
        raise NoteError(f"{what}: the key ID{shown} is not 8 lowercase hex digits")
    raw = _b64(material, what, secret=secret)
    if not raw or raw[0] != ALG_ED25519:
        alg = "" if secret else f" {raw[0]:#04x}" if raw else " none"
        raise NoteError(f"{what}: algorithm{alg} is not Ed25519 (0x01), the one lockd reads")
    if len(raw) != 33:
        raise NoteError(f"{what}: an Ed25519 key is 32 bytes, not {len(raw) - 1}")
    return bytes.fromhex(hex_id), raw[1:]


@dataclass(frozen=True)
class LogVerifier:
    """A log's public key: its name (the checkpoints' origin), key ID and Ed25519 key."""

    name: str
    id: bytes
    public_key: bytes

    @classmethod
    def parse(cls, text: str) -> LogVerifier:
        """Read a verifier key ``<name>+<hex key ID>+<base64(0x01 || key)>``.

        Raises:
            NoteError: malformed, not Ed25519, or the key ID does not match the name and key.
        """
        what = "verifier key"
        name, hex_id, material = _key_fields(text, 3, what)
        kid, public = _parse_key(name, hex_id, material, what)
        if key_id(name, public) != kid:
            raise NoteError(
                f"{what} {name}+{hex_id}: the key ID does not match the name and the key "
                f"(it should be {key_id(name, public).hex()})"
            )
        return cls(name, kid, public)

    def __str__(self) -> str:
        material = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.id.hex()}+{material}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class LogSigner:
    """A log's private key (keep it secret): its name and Ed25519 seed."""

    name: str
    seed: bytes

    @classmethod
    def generate(cls, name: str) -> LogSigner:
        """A fresh Ed25519 key named ``name``.

        Raises:
            NoteError: the name is empty or holds a space or a '+'.
        """
        if not valid_name(name):
            raise NoteError(
                f"log key name {name[:80]!r}: give a name without spaces or '+', e.g. "
                "lockd.example.com/audit (it is the checkpoints' origin line)"
            )
        private = ed25519.Ed25519PrivateKey.generate()
        return cls(name, private.private_bytes_raw())

    @classmethod
    def parse(cls, text: str) -> LogSigner:
        """Read a signer key ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>``.

        Raises:
            NoteError: malformed, not Ed25519, or the key ID does not match; the message shows
                no part of ``text``.
        """
        what = "log signer key"
        private, key, name, hex_id, material = _key_fields(text, 5, what)
        if (private, key) != ("PRIVATE", "KEY"):
            raise NoteError(f"{what}: give {_FORMS[what]}")
        kid, seed = _parse_key(name, hex_id, material, what, secret=True)
        signer = cls(name, seed)
        if signer.verifier().id != kid:
            raise NoteError(f"{what}: the key ID does not match the name and the key")
        return signer

    def __str__(self) -> str:
        material = base64.b64encode(bytes([ALG_ED25519]) + self.seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier().id.hex()}+{material}"

    def __repr__(self) -> str:  # never the seed
        return f"LogSigner(name={self.name!r})"

    def verifier(self) -> LogVerifier:
        public = (
            ed25519.Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes_raw()
        )
        return LogVerifier(self.name, key_id(self.name, public), public)

    def sign(self, message: bytes) -> bytes:
        return ed25519.Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)


# --- signed notes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoteSignature:
    name: str
    id: bytes
    signature: bytes


@dataclass(frozen=True)
class OpenedNote:
    """A note whose text a trusted key signed: ``verified`` names those keys, ``others``
    the signatures of keys the caller did not give (kept, not trusted)."""

    text: str
    verified: tuple[NoteSignature, ...]
    others: tuple[NoteSignature, ...]


def _check_text(text: str, what: str) -> None:
    for char in text:
        if char != "\n" and ord(char) < 0x20:
            raise NoteError(f"{what}: holds the control character {char!r}")


def sign_note(text: str, signers: Sequence[LogSigner]) -> str:
    """``text`` (ending in a newline) signed by each of ``signers``.

    Raises:
        NoteError: the text is empty, does not end in a newline, holds a blank line or a
            control character, or the note would be larger than :data:`MAX_NOTE_BYTES`.
    """
    if not text.endswith("\n") or "\n\n" in text or text.startswith("\n"):
        raise NoteError("a note's text must end in a newline and hold no blank line")
    _check_text(text, "the note's text")
    message = text.encode("utf-8")
    lines = [
        f"{SIGNATURE_PREFIX}{s.name} "
        + base64.b64encode(s.verifier().id + s.sign(message)).decode()
        + "\n"
        for s in signers
    ]
    note = text + "\n" + "".join(lines)
    if len(note.encode("utf-8")) > MAX_NOTE_BYTES:
        raise NoteError(f"the signed note is larger than {MAX_NOTE_BYTES} bytes")
    return note


def _signature_line(line: str, number: int) -> NoteSignature:
    if not line.startswith(SIGNATURE_PREFIX):
        raise NoteError(
            f"signature line {number} does not start with an em dash (U+2014) and a space"
        )
    name, space, b64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not space or not valid_name(name) or not b64:
        raise NoteError(f"signature line {number} is not '— <key name> <base64 signature>'")
    raw = _b64(b64, f"signature line {number}")
    if len(raw) < 5:
        raise NoteError(f"signature line {number}: the signature is {len(raw)} bytes, too short")
    return NoteSignature(name, raw[:4], raw[4:])


def open_note(data: bytes, verifiers: Sequence[LogVerifier]) -> OpenedNote:
    """Read a signed note and check it against ``verifiers``.

    Raises:
        NoteError: it is larger than :data:`MAX_NOTE_BYTES`, not UTF-8, holds a control
            character, has no blank line before its signatures, a malformed signature line or
            more than :data:`MAX_SIGNATURES` of them.
        NoteVerificationError: a given key's signature does not verify, or no given key signed.
    """
    if len(data) > MAX_NOTE_BYTES:
        raise NoteError(f"the note is larger than {MAX_NOTE_BYTES} bytes")
    try:
        note = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NoteError(f"the note is not UTF-8 (byte {e.start})") from None
    _check_text(note, "the note")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("the note has no blank line between its text and its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith("\n"):
        raise NoteError("the note's signature block is empty or does not end in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"the note has {len(lines)} signatures; at most {MAX_SIGNATURES} are read")
    known = {(v.name, v.id): v for v in verifiers}
    verified: dict[tuple[str, bytes], NoteSignature] = {}
    others: list[NoteSignature] = []
    message = text.encode("utf-8")
    for number, line in enumerate(lines, start=1):
        signature = _signature_line(line, number)
        key = (signature.name, signature.id)
        verifier = known.get(key)
        if verifier is None:
            if signature not in others:
                others.append(signature)
            continue
        if key in verified:
            continue  # a repeated signature by one key counts once, as in Go's note.Open
        if not verifier.verify(message, signature.signature):
            raise NoteVerificationError(
                f"the signature of key {signature.name}+{signature.id.hex()} on the note does "
                "not verify: the note was altered or signed by another key of that name"
            )
        verified[key] = signature
    if not verified:
        given = ", ".join(f"{v.name}+{v.id.hex()}" for v in verifiers) or "none"
        found = ", ".join(f"{s.name}+{s.id.hex()}" for s in others) or "none"
        raise NoteVerificationError(
            f"the note is signed by no trusted key (trusted: {given}; signed by: {found})"
        )
    return OpenedNote(text, tuple(verified.values()), tuple(others))


# --- checkpoints --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's origin, its size and root hash, and extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        """The checkpoint's text, as signed."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return "\n".join([*lines, *self.extensions]) + "\n"

    def sign(self, signer: LogSigner) -> str:
        """The checkpoint as a note signed by ``signer``, whose name must be its origin.

        Raises:
            NoteError: the signer's name is not the origin, or the body is malformed.
        """
        if signer.name != self.origin:
            raise NoteError(
                f"the log key {signer.name!r} cannot sign a checkpoint of origin {self.origin!r}"
            )
        parse_checkpoint(self.body())  # the body lockd signs is one it reads back
        return sign_note(self.body(), [signer])


def parse_checkpoint(text: str) -> Checkpoint:
    """Read a checkpoint body (C2SP tlog-checkpoint).

    Raises:
        NoteError: it does not end in a newline, has fewer than three lines, an origin that
            is empty, a size that is not decimal without leading zeros, a root hash that is not
            the base64 of 32 bytes, or an empty extension line.
    """
    if not text.endswith("\n"):
        raise NoteError("the checkpoint does not end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("the checkpoint has fewer than three lines (origin, size, root hash)")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise NoteError("the checkpoint's origin line is empty")
    if not re.fullmatch(r"0|[1-9][0-9]{0,18}", size_text) or int(size_text) > MAX_SIZE:
        raise NoteError(
            f"the checkpoint's size {size_text[:40]!r} is not a decimal number without "
            f"leading zeros, at most {MAX_SIZE}"
        )
    root = _b64(root_text, "the checkpoint's root hash")
    if len(root) != HASH_SIZE:
        raise NoteError(f"the checkpoint's root hash is {len(root)} bytes, not {HASH_SIZE}")
    if any(not line for line in extensions):
        raise NoteError("the checkpoint has an empty extension line")
    return Checkpoint(origin, int(size_text), root, tuple(extensions))


def open_checkpoint(data: bytes, verifier: LogVerifier, origin: str | None = None) -> Checkpoint:
    """A signed checkpoint checked against the log's key: the note must be signed by it and
    the checkpoint's origin must be ``origin`` (lockd's logs: the key's name, the default).

    Raises:
        NoteError: the note or its checkpoint is malformed.
        NoteVerificationError: the log's key did not sign it, or its origin is another log's.
    """
    opened = open_note(data, [verifier])
    checkpoint = parse_checkpoint(opened.text)
    expected = verifier.name if origin is None else origin
    if checkpoint.origin != expected:
        raise NoteVerificationError(
            f"the checkpoint's origin {checkpoint.origin!r} is not {expected!r}: it is another "
            "log's checkpoint"
        )
    return checkpoint


class LogRewrittenError(ProofError):
    """The log now is not a consistent extension of a checkpoint saved before: its history was
    rewritten, or another log answers. ``size``: the size at which consistency fails (exit 1)."""

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message)
        self.size = size


def check_extension(saved: Checkpoint, now: Checkpoint, proof: Sequence[bytes]) -> None:
    """Check that the log of checkpoint ``now`` extends the log of the ``saved`` one: the same
    origin, no fewer entries, and (when it grew) a consistency proof between their roots.

    Raises:
        LogRewrittenError: it does not, naming the size at which consistency fails.
    """
    fails = f"consistency fails at size {saved.size}"
    if now.origin != saved.origin:
        raise LogRewrittenError(
            f"the log's origin is {now.origin!r}, not {saved.origin!r} as in the saved "
            f"checkpoint: another log answers (a replaced service or database); {fails}",
            size=saved.size,
        )
    if now.size < saved.size:
        raise LogRewrittenError(
            f"the log has {now.size} entries, fewer than the {saved.size} of the saved "
            f"checkpoint: entries were removed or the database was replaced; {fails}",
            size=saved.size,
        )
    if now.size == saved.size and now.root != saved.root:
        raise LogRewrittenError(
            f"the log of {now.size} entries has another root than the saved checkpoint "
            f"({saved.root.hex()}, now {now.root.hex()}): its history was rewritten; {fails}",
            size=saved.size,
        )
    try:
        verify_consistency(saved.size, now.size, saved.root, now.root, proof)
    except ProofError as e:
        raise LogRewrittenError(
            f"the log of {now.size} entries is not a consistent extension of the saved "
            f"checkpoint of {saved.size}: its first {saved.size} entries were rewritten, or "
            f"the database was replaced ({e}); {fails}",
            size=saved.size,
        ) from e
