"""lockd.trust.checkpoint: C2SP signed notes and tlog checkpoints, against the vectors of Go's
golang.org/x/mod/sumdb/note (the PeterNeumann key and note of its documentation and
note_test.go) and a real checkpoint of sum.golang.org, the Go checksum database."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from lockd.trust.checkpoint import (
    MAX_NOTE_BYTES,
    Checkpoint,
    LogSigner,
    LogVerifier,
    NoteError,
    NoteVerificationError,
    key_id,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    sign_note,
)

# golang.org/x/mod/sumdb/note: note.go's package documentation and note_test.go
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdng"
    "otpRZb6KE6RyyBwJnAM=\n"
)
PETER_NOTE = PETER_TEXT + "\n" + PETER_SIG
GIVE_VKEY = (
    "verifier key: give <name>+<8 hex digits>+<base64 key>, as `lockd keygen --log-key` prints"
)

# The Go checksum database's key (cmd/go's default GOSUMDB) and one of its checkpoints.
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_CHECKPOINT = (
    "go.sum database tree\n63096908\n8lHrQPRYe4KT4WQ9/Qk8/taKnD6IRHbFgfN7vQE2Y54=\n\n"
    "— sum.golang.org Az3gri/oVBN1jAhNZ/iS+W31psFAWRT20/GyrhpU6taFwulQGetBkH5S7wpGXdS935jiIGiU"
    "UAXBVHzT/P6fYhqAmAk=\n"
)


def test_the_go_reference_key_note_and_signature_byte_for_byte() -> None:
    verifier = LogVerifier.parse(PETER_VKEY)
    signer = LogSigner.parse(PETER_SKEY)
    assert signer.verifier() == verifier
    assert str(verifier) == PETER_VKEY
    assert str(signer) == PETER_SKEY
    assert sign_note(PETER_TEXT, [signer]) == PETER_NOTE  # Ed25519 is deterministic
    opened = open_note(PETER_NOTE.encode(), [verifier])
    assert opened.text == PETER_TEXT
    assert [(s.name, s.id.hex()) for s in opened.verified] == [("PeterNeumann", "c74f20a3")]


def test_the_key_id_is_the_signed_note_specs_hash_written_here() -> None:
    public = base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")[1:]
    by_hand = hashlib.sha256(b"PeterNeumann" + b"\x0a" + b"\x01" + public).digest()[:4]
    assert key_id("PeterNeumann", public) == by_hand == bytes.fromhex("c74f20a3")


def test_a_real_sum_golang_org_checkpoint_verifies_and_parses() -> None:
    verifier = LogVerifier.parse(SUMDB_VKEY)
    opened = open_note(SUMDB_CHECKPOINT.encode(), [verifier])
    checkpoint = parse_checkpoint(opened.text)
    assert (checkpoint.origin, checkpoint.size) == ("go.sum database tree", 63096908)
    assert checkpoint.root == base64.b64decode("8lHrQPRYe4KT4WQ9/Qk8/taKnD6IRHbFgfN7vQE2Y54=")
    assert checkpoint.body() == opened.text
    assert (
        open_checkpoint(SUMDB_CHECKPOINT.encode(), verifier, "go.sum database tree") == checkpoint
    )
    # lockd's own logs name their key after their origin; another origin is another log
    with pytest.raises(NoteVerificationError) as raised:
        open_checkpoint(SUMDB_CHECKPOINT.encode(), verifier)
    assert str(raised.value) == (
        "the checkpoint's origin 'go.sum database tree' is not 'sum.golang.org': it is another "
        "log's checkpoint"
    )


def test_every_mangling_of_the_verifier_key_is_refused() -> None:
    """As note_test.go's TestNewVerifier: every proper substring and every byte changed."""
    for i in range(len(PETER_VKEY)):
        for j in range(i + 1, len(PETER_VKEY) + 1):
            if (i, j) != (0, len(PETER_VKEY)):
                with pytest.raises(NoteError):
                    LogVerifier.parse(PETER_VKEY[i:j])
    for i in range(len(PETER_VKEY)):
        changed = PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1 :]
        if changed.strip() != PETER_VKEY:
            with pytest.raises(NoteError):
                LogVerifier.parse(changed)


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("PeterNeumann+c74f20a3", GIVE_VKEY),
        (
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "verifier key: the name 'Peter Neumann' is empty or holds a space or a '+'",
        ),
        (
            "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "verifier key: the key ID 'C74F20A3' is not 8 lowercase hex digits",
        ),
        (
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "verifier key PeterNeumann+cc469956: the key ID does not match the name and the key "
            "(it should be c74f20a3)",
        ),
        (
            "PeterNeumann+c74f20a3+AhpjUO6H8V0Jl6Mio6JJ4JrPaxCrfF7FTAkgVgAE6bGPaw==",
            "verifier key: algorithm 0x02 is not Ed25519 (0x01), the one lockd reads",
        ),
        (
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy",
            "verifier key: an Ed25519 key is 32 bytes, not 29",
        ),
        ("PeterNeumann+c74f20a3+!!!!", "verifier key: '!!!!' is not standard base64"),
        ("", GIVE_VKEY),
    ],
)
def test_bad_verifier_keys_are_refused_saying_why(vkey: str, message: str) -> None:
    with pytest.raises(NoteError) as raised:
        LogVerifier.parse(vkey)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("skey", "message"),
    [
        (
            "PUBLIC+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
            "log signer key: give PRIVATE+KEY+<name>+<8 hex digits>+<base64 key>",
        ),
        (
            "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
            "log signer key: the key ID does not match the name and the key",
        ),
        (PETER_VKEY, "log signer key: give PRIVATE+KEY+<name>+<8 hex digits>+<base64 key>"),
    ],
)
def test_bad_signer_keys_are_refused_saying_why(skey: str, message: str) -> None:
    with pytest.raises(NoteError) as raised:
        LogSigner.parse(skey)
    assert str(raised.value).startswith(message)


def windows(text: str, width: int = 8) -> set[str]:
    return {text[i : i + width] for i in range(len(text) - width + 1)}


PETER_SEED_B64 = PETER_SKEY.rsplit("+", 2)[-2] + "+" + PETER_SKEY.rsplit("+", 1)[-1]


@pytest.mark.parametrize(
    ("skey", "message"),
    [
        (PETER_SKEY + "x", "log signer key: the key is not standard base64"),
        (PETER_SKEY[:-4], "log signer key: an Ed25519 key is 32 bytes, not 29"),
        (
            # no name: the '+' in the seed's base64 shifts the seed into the name and ID fields
            "PRIVATE+KEY+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
            "log signer key: the key ID is not 8 lowercase hex digits",
        ),
        (
            "PRIVATE+KEY+AYEKFALV FGyNhPJEMzD1QIDr+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr",
            "log signer key: the name is empty or holds a space or a '+'",
        ),
        (
            "PRIVATE+KEY+PeterNeumann+c74f20a3+" + base64.b64encode(b"\x02" * 33).decode(),
            "log signer key: algorithm is not Ed25519 (0x01), the one lockd reads",
        ),
    ],
)
def test_a_bad_signer_key_shows_no_part_of_itself(skey: str, message: str) -> None:
    """The service's log names the file and what is wrong, never the seed (F6: a key file
    with one extra character printed the whole seed)."""
    with pytest.raises(NoteError) as raised:
        LogSigner.parse(skey)
    assert str(raised.value) == message
    assert not windows(PETER_SEED_B64) & windows(str(raised.value))
    assert "AYEKFALV" not in str(raised.value)


def test_the_signer_never_shows_its_seed() -> None:
    signer = LogSigner.parse(PETER_SKEY)
    assert repr(signer) == "LogSigner(name='PeterNeumann')"
    assert "AYEKFALV" not in f"{signer!r}"


@pytest.mark.parametrize(
    ("note", "message"),
    [
        (PETER_TEXT + PETER_SIG, "the note has no blank line between its text and its signatures"),
        (PETER_NOTE[:-1], "the note's signature block is empty or does not end in a newline"),
        (PETER_TEXT + "\n", "the note's signature block is empty or does not end in a newline"),
        (
            PETER_NOTE.replace("— ", "-- "),
            "signature line 1 does not start with an em dash (U+2014) and a space",
        ),
        (PETER_NOTE.replace("— PeterNeumann ", "— PeterNeumann"), "signature line 1 is not"),
        (PETER_NOTE.replace("x08go", "x08g!"), "signature line 1: 'x08g!/ZJ"),
        (PETER_TEXT + "\n— PeterNeumann AAAAAA==\n", "signature line 1: the signature is 4 bytes"),
        (PETER_NOTE.replace("cryptography", "crypto\tgraphy"), "the note: holds the control"),
        (PETER_NOTE.replace("problem,", "problem,\r"), "the note: holds the control character"),
        (PETER_NOTE + PETER_SIG * 100, "the note has 101 signatures; at most 100 are read"),
    ],
)
def test_malformed_notes_are_refused_saying_why(note: str, message: str) -> None:
    with pytest.raises(NoteError) as raised:
        open_note(note.encode(), [LogVerifier.parse(PETER_VKEY)])
    assert str(raised.value).startswith(message)


def test_a_note_that_is_not_utf8_or_too_long_is_refused_before_it_is_read() -> None:
    verifier = LogVerifier.parse(PETER_VKEY)
    with pytest.raises(NoteError, match=r"^the note is not UTF-8 \(byte 3\)$"):
        open_note(b"abc\xff\n\n" + PETER_SIG.encode(), [verifier])
    with pytest.raises(NoteError, match=f"^the note is larger than {MAX_NOTE_BYTES} bytes$"):
        open_note(b"a" * (MAX_NOTE_BYTES + 1), [verifier])


def test_an_altered_note_or_an_unknown_key_does_not_verify() -> None:
    verifier = LogVerifier.parse(PETER_VKEY)
    with pytest.raises(NoteVerificationError) as raised:
        open_note(PETER_NOTE.replace("cryptography", "cryptographY").encode(), [verifier])
    assert str(raised.value) == (
        "the signature of key PeterNeumann+c74f20a3 on the note does not verify: the note was "
        "altered or signed by another key of that name"
    )
    other = LogSigner.generate("PeterNeumann").verifier()
    with pytest.raises(NoteVerificationError) as raised:
        open_note(PETER_NOTE.encode(), [other])
    assert str(raised.value) == (
        f"the note is signed by no trusted key (trusted: PeterNeumann+{other.id.hex()}; signed "
        "by: PeterNeumann+c74f20a3)"
    )
    with pytest.raises(NoteVerificationError, match=r"\(trusted: none; signed by"):
        open_note(PETER_NOTE.encode(), [])


def test_unknown_signers_are_ignored_and_repeats_count_once() -> None:
    peter = LogVerifier.parse(PETER_VKEY)
    enoch = LogSigner.generate("EnochRoot")
    cosigned = sign_note(PETER_TEXT, [enoch, LogSigner.parse(PETER_SKEY)])
    opened = open_note((cosigned + PETER_SIG).encode(), [peter])
    assert [s.name for s in opened.verified] == ["PeterNeumann"]
    assert [s.name for s in opened.others] == ["EnochRoot"]
    both = open_note(cosigned.encode(), [peter, enoch.verifier()])
    assert sorted(s.name for s in both.verified) == ["EnochRoot", "PeterNeumann"]


def test_a_known_keys_bad_signature_refuses_the_note_even_beside_a_good_one() -> None:
    enoch = LogSigner.generate("EnochRoot")
    forged = LogSigner(enoch.name, ed25519.Ed25519PrivateKey.generate().private_bytes_raw())
    # the forger's line claims Enoch's key ID
    sig = base64.b64encode(enoch.verifier().id + forged.sign(PETER_TEXT.encode())).decode()
    note = PETER_NOTE + f"— EnochRoot {sig}\n"
    with pytest.raises(NoteVerificationError, match="^the signature of key EnochRoot+"):
        open_note(note.encode(), [LogVerifier.parse(PETER_VKEY), enoch.verifier()])


def test_a_checkpoint_round_trips_through_its_signed_note() -> None:
    signer = LogSigner.generate("lockd.example/audit")
    checkpoint = Checkpoint("lockd.example/audit", 12, hashlib.sha256(b"x").digest(), ("ext a",))
    note = checkpoint.sign(signer)
    assert note.startswith("lockd.example/audit\n12\n" + base64.b64encode(checkpoint.root).decode())
    assert open_checkpoint(note.encode(), signer.verifier()) == checkpoint
    with pytest.raises(NoteError, match="^the log key 'other' cannot sign a checkpoint of origin"):
        checkpoint.sign(LogSigner.generate("other"))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("origin\n1\n" + "A" * 43 + "=", "the checkpoint does not end in a newline"),
        ("origin\n1\n", "the checkpoint has fewer than three lines (origin, size, root hash)"),
        ("\n1\n" + "A" * 43 + "=\n", "the checkpoint's origin line is empty"),
        ("o\n01\n" + "A" * 43 + "=\n", "the checkpoint's size '01' is not a decimal number"),
        ("o\n-1\n" + "A" * 43 + "=\n", "the checkpoint's size '-1' is not a decimal number"),
        ("o\n+1\n" + "A" * 43 + "=\n", "the checkpoint's size '+1' is not a decimal number"),
        ("o\n9223372036854775808\n" + "A" * 43 + "=\n", "the checkpoint's size '92233720368"),
        ("o\n1\n" + "A" * 42 + "==\n", "the checkpoint's root hash is 31 bytes, not 32"),
        ("o\n1\n" + "A" * 43 + "\n", "the checkpoint's root hash: 'AAAA"),
        ("o\n1\n" + "A" * 43 + "=\n\next\n", "the checkpoint has an empty extension line"),
    ],
)
def test_malformed_checkpoints_are_refused_saying_why(body: str, message: str) -> None:
    with pytest.raises(NoteError) as raised:
        parse_checkpoint(body)
    assert str(raised.value).startswith(message)


def test_the_c2sp_example_checkpoint_body_parses() -> None:
    body = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    checkpoint = parse_checkpoint(body)
    assert (checkpoint.origin, checkpoint.size, checkpoint.extensions) == (
        "example.com/behind-the-sofa",
        20852163,
        (),
    )
    assert checkpoint.body() == body


def test_sign_note_refuses_text_it_could_not_read_back() -> None:
    signer = LogSigner.parse(PETER_SKEY)
    for text in ("no newline", "a\n\nb\n", "tab\there\n", ""):
        with pytest.raises(NoteError):
            sign_note(text, [signer])
    with pytest.raises(NoteError, match="^log key name 'a b': give a name without spaces"):
        LogSigner.generate("a b")
