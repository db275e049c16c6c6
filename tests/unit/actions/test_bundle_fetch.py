"""Export fetches the log's key, checkpoint and proofs (lockd.bundle.logproof.fetch_log_proof)
from a service that may answer anything: a real HTTP server on loopback plays one answering
garbage, oversized or wrong proofs; export fails with an exact error and writes nothing."""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bundles import DIGEST, ENVELOPE, KEY, LOG_SIGNER, chained, leaf, run_lockd
from loopback import Handler, loopback_server

from lockd.bundle import export_bundle, verify_bundle
from lockd.client import Client
from lockd.errors import ServerError
from lockd.trust import keys
from lockd.trust.auditlog import GENESIS
from lockd.trust.checkpoint import Checkpoint, LogSigner
from lockd.trust.merkle import MemoryTree, inclusion_proof, tree_root
from lockd.trust.signed import signed_from

STORED = signed_from(json.loads(ENVELOPE), "e").to_json()  # as the service serves it back
KEYID = keys.keyid(KEY)


# the service's whole chain: entry 2 records the manifest's creation
LOG = chained(
    [
        ("token.create:writer", "ci", None),
        ("manifest.create", DIGEST, "sha256:" + hashlib.sha256(STORED).hexdigest()),
        ("token.create:reader", "bob", None),
    ],
    1,
    GENESIS,
)
TREE = MemoryTree(tuple(leaf(e) for e in LOG))
NOTE = Checkpoint(LOG_SIGNER.name, 3, tree_root(3, TREE)).sign(LOG_SIGNER).encode()


def _proof(index: int, size: int) -> bytes:
    return json.dumps({"hashes": [h.hex() for h in inclusion_proof(index, size, TREE)]}).encode()


PROOF = _proof(1, 3)
VKEY = f"{LOG_SIGNER.verifier()}\n".encode()


def _service(log_answers: dict[str, tuple[int, bytes]]) -> type[Handler]:
    """A service holding the manifest and LOG, answering the log's paths with ``log_answers``
    (path -> status, body) where given, else as lockd would."""
    honest = {
        "/v1/audit/log-key": (200, VKEY),
        "/v1/audit/checkpoint": (200, NOTE),
        "/v1/audit/proof/inclusion": (200, PROOF),
    }
    answers = {**honest, **log_answers}
    detail = {
        "digest": DIGEST,
        "name": "train",
        "labels": {},
        "keyids": [KEYID],
        "subjects": [],
        "envelope": json.loads(STORED),
    }

    class Service(Handler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if urllib.parse.unquote(url.path) == f"/v1/manifests/{DIGEST}":
                self.send(200, json.dumps(detail).encode())
            elif url.path == f"/keys/{KEYID}":
                pem = keys.public_pem(KEY.public_key()).decode()
                self.send(200, json.dumps({"keyid": KEYID, "pem": pem}).encode())
            elif url.path == "/v1/audit":
                self.send(200, json.dumps(LOG if query.get("after") == "0" else []).encode())
            elif url.path in answers:
                status, body = answers[url.path]
                self.send(status, body, "text/plain")
            else:
                self.send(404, b'{"detail": "not found"}')

    return Service


@pytest.fixture
def serve() -> Iterator[Callable[[dict[str, tuple[int, bytes]]], str]]:
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield lambda answers: stack.enter_context(loopback_server(_service(answers)))


def test_an_honest_service_gives_a_bundle_that_verifies_pinned(serve: Any, tmp_path: Path) -> None:
    url = serve({})
    out = tmp_path / "b.tar.gz"
    done = export_bundle(Client(url), DIGEST, out, log_key=LOG_SIGNER.verifier())
    assert done.log == (3, str(LOG_SIGNER.verifier()))
    verdict = verify_bundle(out, LOG_SIGNER.verifier())
    assert verdict.ok, verdict.checks
    assert verdict.checks[-1].message.startswith("audit entries 2 are in the log ")


OTHER = LogSigner.generate(LOG_SIGNER.name)
MANY = json.dumps({"hashes": ["ab" * 32] * 129}).encode()


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        (
            {"/v1/audit/log-key": (200, b"not a key")},
            "{url}/v1/audit/log-key: the answer is not a log verifier key (verifier key: give "
            "<name>+<8 hex digits>+<base64 key>, as `lockd keygen --log-key` prints)",
        ),
        (
            {"/v1/audit/log-key": (200, b"x" * 5000)},
            "GET {url}/v1/audit/log-key: the answer is larger than 4096 bytes",
        ),
        (
            {"/v1/audit/log-key": (500, b'{"detail": "boom"}')},
            "GET {url}/v1/audit/log-key: 500 boom",
        ),
        (
            {"/v1/audit/checkpoint": (200, b"garbage")},
            "{url}/v1/audit/checkpoint: the note has no blank line between its text and its "
            "signatures; a bundle of it would not verify",
        ),
        (
            {"/v1/audit/checkpoint": (200, b"x" * (64 * 1024 + 1))},
            "GET {url}/v1/audit/checkpoint: the answer is larger than 65536 bytes",
        ),
        (
            {
                "/v1/audit/checkpoint": (
                    200,
                    Checkpoint(OTHER.name, 3, tree_root(3, TREE)).sign(OTHER).encode(),
                )
            },
            "{url}/v1/audit/checkpoint: the note is signed by no trusted key (trusted: "
            f"{LOG_SIGNER.name}+{LOG_SIGNER.verifier().id.hex()}; signed by: "
            f"{OTHER.name}+{OTHER.verifier().id.hex()}); a bundle of it would not verify",
        ),
        (
            {
                "/v1/audit/checkpoint": (
                    200,
                    Checkpoint(LOG_SIGNER.name, 1, tree_root(1, TREE)).sign(LOG_SIGNER).encode(),
                )
            },
            "{url}/v1/audit/checkpoint: the log's checkpoint of 1 entries does not cover audit "
            "entry 2 yet; export again in a moment",
        ),
        (
            {"/v1/audit/proof/inclusion": (200, b"\xff not json")},
            "GET {url}/v1/audit/proof/inclusion: the answer is not JSON (not UTF-8); is --server "
            "a lockd service?",
        ),
        (
            {"/v1/audit/proof/inclusion": (200, MANY)},
            "{url}/v1/audit/proof/inclusion: the answer is not a proof (a JSON object whose "
            "'hashes' is a list of at most 128 hex SHA-256 hashes)",
        ),
        (
            {"/v1/audit/proof/inclusion": (200, b'{"hashes": []}')},
            "{url}/v1/audit/proof/inclusion: the proof of audit entry 2 does not verify (the "
            "inclusion proof of leaf 1 in a tree of size 3 is too short (0 hashes)); a bundle "
            "of it would not",
        ),
        (
            {"/v1/audit/proof/inclusion": (200, _proof(1, 2))},
            "{url}/v1/audit/proof/inclusion: the proof of audit entry 2 does not verify (the "
            "inclusion proof of leaf 1 in a tree of size 3 is too short (1 hashes)); a bundle "
            "of it would not",
        ),
        (
            {"/v1/audit/proof/inclusion": (200, _proof(0, 3))},
            "{url}/v1/audit/proof/inclusion: the proof of audit entry 2 does not verify (leaf 1 "
            "is not in the tree of size 3 with root ROOT: the inclusion proof leads to another "
            "root); a bundle of it would not",
        ),
    ],
    ids=[
        "key-garbage",
        "key-oversized",
        "key-500",
        "checkpoint-garbage",
        "checkpoint-oversized",
        "checkpoint-another-key",
        "checkpoint-too-small",
        "proof-not-json",
        "proof-oversized",
        "proof-empty",
        "proof-of-another-size",
        "proof-of-another-leaf",
    ],
)
def test_a_hostile_log_answer_fails_export_exactly_and_writes_nothing(
    answers: dict[str, tuple[int, bytes]], message: str, serve: Any, tmp_path: Path
) -> None:
    url = serve(answers)
    out = tmp_path / "b.tar.gz"
    with pytest.raises(ServerError) as e:
        export_bundle(Client(url), DIGEST, out)
    root = tree_root(3, TREE).hex()
    assert str(e.value).replace(url, "{url}") == message.replace("ROOT", root)
    assert list(tmp_path.iterdir()) == []


def test_the_cli_exits_2_naming_the_answer_and_writes_nothing(serve: Any, tmp_path: Path) -> None:
    url = serve({"/v1/audit/proof/inclusion": (200, MANY)})
    out = tmp_path / "b.tar.gz"
    result = run_lockd("audit", "export", DIGEST, "-o", out, "--server", url)
    assert (result.returncode, result.stdout) == (2, "")
    assert " ".join(result.stderr.split()) == (
        f"lockd: error: {url}/v1/audit/proof/inclusion: the answer is not a proof (a JSON object "
        "whose 'hashes' is a list of at most 128 hex SHA-256 hashes)"
    )
    assert list(tmp_path.iterdir()) == []
