"""The watch agent's manifests as the service stores them, envelope or Sigstore bundle: a
key-based bundle checked against --key, a tampered one and a keyless one by an identity the
policy does not name judged untrusted as an envelope of an unknown key is, the real staging
keyless bundle (tests/assets/sigstore) checked then refused as not a lockd manifest, and bundles
kept in the manifest cache byte for byte, a corrupt one dropped and the service asked again."""

from __future__ import annotations

import base64
import json
import logging
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import loopback
import pytest
from observations import IMAGE, observation, signed
from sigstore_assets import ISSUER, KEYLESS, PREDICATE, ROOT, WHO

from lockd.client import Client
from lockd.errors import ManifestError, ServerError
from lockd.judgement.policy import default_policy
from lockd.model.report import Check
from lockd.trust import keys
from lockd.trust.keyless import Identity
from lockd.trust.signed import Signed, Trust, parse_signed, payload_digest
from lockd.trust.sigstore_bundle import SigstoreBundle, key_bundle
from lockd.trust.statement import PREDICATE_TYPES
from lockd.watch.verifier import (
    Judgement,
    Known,
    ManifestCache,
    ServiceDownError,
    judge,
    open_known,
)

SERVER = "http://127.0.0.1:1"  # nothing listens
SOURCE = "http://svc/v1/manifests/sha256:" + "d" * 64
NOT_LOCKD = f"predicateType is {PREDICATE!r}, not lockd's ({', '.join(PREDICATE_TYPES)})"
UNTRUSTED_IDENTITY = (
    f"keyless signature refused: the certificate names {WHO} (issuer {ISSUER}), not a trusted "
    f"identity (ci@example.org (issuer {ISSUER}))"
)


@pytest.fixture(scope="module")
def signer() -> keys.PrivateKey:
    return keys.generate_private_key()


def bundle_of(key: keys.PrivateKey) -> SigstoreBundle:
    """A lockd manifest as ``record --bundle`` writes it (key-based)."""
    bundle = parse_signed(key_bundle(signed(key), keys.keyid(key.public_key())), "b")
    assert isinstance(bundle, SigstoreBundle)
    return bundle


def known(manifest: Signed) -> Known:
    return Known(IMAGE, payload_digest(manifest), manifest, "2026-01-01T00:00:00+00:00")


def keyless() -> SigstoreBundle:
    bundle = parse_signed(KEYLESS.read_bytes(), "b")
    assert isinstance(bundle, SigstoreBundle) and bundle.signer == "certificate"
    return bundle


def identity(who: str) -> Trust:
    return Trust(identities=(Identity(ISSUER, identity=who),), trusted_root=ROOT.read_bytes())


def untrusted(judgement: Judgement, message: str) -> None:
    """The shape of an untrusted signature: a failed verdict whose first finding is the
    signature check, nothing compared."""
    assert judgement.verdict == "fail"
    assert judgement.report is not None
    assert judgement.report.checks[0] == Check(
        id="signature", status="fail", evidence="signature", message=message
    )
    assert {c.status for c in judgement.report.checks[1:]} == {"skip"}
    line = f"signature: {message}"
    assert judgement.findings == (line if len(line) <= 200 else line[:199] + "…",)


def test_a_key_based_bundle_passes_under_the_key(signer: keys.PrivateKey) -> None:
    bundle = bundle_of(signer)
    opened = open_known(known(bundle), Trust(keys=(signer.public_key(),)), SOURCE)
    assert opened.signature.status == "pass"
    assert opened.keyids == (keys.keyid(signer.public_key()),)
    judgement = judge(observation(), opened, default_policy(), image_id=IMAGE)
    assert (judgement.verdict, judgement.findings) == ("pass", ())
    assert judgement.manifest_digest == payload_digest(bundle)


def test_a_tampered_bundle_is_untrusted_as_an_unknown_key_is(signer: keys.PrivateKey) -> None:
    doc = json.loads(bundle_of(signer).raw)
    payload = base64.b64decode(doc["dsseEnvelope"]["payload"]).replace(b"idna", b"idnb")
    doc["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    tampered = parse_signed(json.dumps(doc).encode(), "b")
    trust = Trust(keys=(signer.public_key(),))
    tried = f"tried keyids {keys.keyid(signer.public_key())}"
    message = (
        f"envelope signature does not verify against any trusted key ({tried}); check that "
        "--key is the public key of the signer"
    )
    opened = open_known(known(tampered), trust, SOURCE)
    assert opened.statement is None
    untrusted(judge(observation(), opened, default_policy(), image_id=IMAGE), message)
    # an envelope by a key that is not trusted: the same verdict, the same finding
    stranger = keys.generate_private_key()
    by_stranger = open_known(known(signed(stranger)), trust, SOURCE)
    untrusted(judge(observation(), by_stranger, default_policy(), image_id=IMAGE), message)


def test_a_keyless_bundle_is_checked_then_refused_as_not_a_lockd_manifest() -> None:
    bundle = keyless()
    cache = ManifestCache(Path("/nonexistent"), Client(SERVER), identity(WHO), SERVER)
    with pytest.raises(ManifestError) as refused:
        cache.opened(known(bundle))
    assert str(refused.value) == f"{SERVER}/v1/manifests/{payload_digest(bundle)}: {NOT_LOCKD}"


@pytest.mark.parametrize(
    ("trust", "message"),
    [
        (identity("ci@example.org"), UNTRUSTED_IDENTITY),
        (
            Trust(keys=(keys.generate_private_key().public_key(),)),
            "the manifest is signed keylessly (a certificate); give the signer's identity: "
            "--certificate-identity (or --certificate-identity-regexp) and "
            "--certificate-oidc-issuer",
        ),
    ],
    ids=["another identity", "keys only"],
)
def test_a_keyless_bundle_by_an_identity_not_trusted_is_untrusted_before_its_payload_is_read(
    trust: Trust, message: str
) -> None:
    opened = open_known(known(keyless()), trust, SOURCE)  # not a lockd manifest: never read
    assert opened.statement is None
    untrusted(judge(observation(), opened, default_policy(), image_id=IMAGE), message)


def cache_in(tmp_path: Path, trust: Trust | None = None) -> ManifestCache:
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700, exist_ok=True)
    return ManifestCache(directory, Client(SERVER), trust or Trust(), SERVER)


def entry(tmp_path: Path) -> Path:
    return tmp_path / "cache" / f"{IMAGE.removeprefix('sha256:')}.json"


def test_a_cached_keyless_bundle_is_read_back_as_the_service_stored_it(tmp_path: Path) -> None:
    bundle = keyless()
    cache_in(tmp_path)._store(known(bundle))
    stored = json.loads(entry(tmp_path).read_bytes())
    assert stored["signed"].encode() == KEYLESS.read_bytes()
    again = cache_in(tmp_path, identity(WHO)).get(IMAGE)  # a new agent: from disk
    assert again is not None and again.signed == bundle
    with pytest.raises(ManifestError) as refused:
        cache_in(tmp_path, identity(WHO)).opened(again)  # its signature still checks out
    assert str(refused.value).endswith(f": {NOT_LOCKD}")


def test_an_entry_cached_before_bundles_is_read(tmp_path: Path, signer: keys.PrivateKey) -> None:
    envelope = signed(signer)
    old = {
        "image_id": IMAGE,
        "digest": payload_digest(envelope),
        "envelope": json.loads(envelope.to_json()),
        "fetched_at": "t",
    }
    cache_in(tmp_path)
    entry(tmp_path).write_text(json.dumps(old))
    read = cache_in(tmp_path).get(IMAGE)
    assert read is not None and read.signed == envelope


def _corrupt(signer: keys.PrivateKey) -> dict[str, tuple[object, str]]:
    """Cache entries of a bundle gone bad: (the entry's ``signed``, why it is dropped)."""
    good = bundle_of(signer)
    doc = json.loads(good.raw)
    unknown = dict(doc, extra=1)
    swapped = json.loads(bundle_of(keys.generate_private_key()).raw)
    swapped["dsseEnvelope"]["payload"] = base64.b64encode(b"{}").decode()
    return {
        "unknown field": (
            json.dumps(unknown),
            "{path}: not a Sigstore bundle lockd reads: extra: not a field of a Sigstore bundle",
        ),
        "another payload": (json.dumps(swapped), f"the payload is not {payload_digest(good)}"),
        "not JSON text": (doc, "signed is not JSON text"),
        "truncated": (good.raw.decode()[:100], "{path}: not a DSSE envelope: "),
    }


@pytest.fixture
def answering() -> Iterator[tuple[str, dict[str, object]]]:
    """A real HTTP server on loopback answering, by path, the JSON a test puts in its dict: a
    lockd service, or one saying what no lockd service says."""
    answers: dict[str, object] = {}

    class Answering(loopback.Handler):
        def do_GET(self) -> None:  # noqa: N802 (http.server calls it so)
            path = urllib.parse.unquote(self.path.partition("?")[0])
            body = json.dumps(answers.get(path, {"detail": "no"})).encode()
            self.send(200 if path in answers else 404, body)

    with loopback.loopback_server(Answering) as url:
        yield url, answers


def serve(answers: dict[str, object], bundle: SigstoreBundle, digest: str | None = None) -> str:
    """Answer as the service does for an image whose newest manifest was pushed as ``bundle``
    (under ``digest``, default its own); the digest."""
    digest = digest or payload_digest(bundle)
    answers["/v1/manifests"] = [{"digest": digest}]
    answers[f"/v1/manifests/{digest}"] = {
        "digest": digest,
        "envelope": json.loads(bundle.envelope.to_json()),
        "bundle": json.loads(bundle.raw),
    }
    return digest


@pytest.mark.parametrize("case", ["unknown field", "another payload", "not JSON text", "truncated"])
def test_a_corrupt_cached_bundle_is_dropped_and_the_service_asked_again(
    tmp_path: Path,
    signer: keys.PrivateKey,
    case: str,
    caplog: pytest.LogCaptureFixture,
    answering: tuple[str, dict[str, object]],
) -> None:
    text, why = _corrupt(signer)[case]
    url, answers = answering
    good = bundle_of(signer)
    digest = serve(answers, good)
    (tmp_path / "cache").mkdir(mode=0o700)
    cache = ManifestCache(tmp_path / "cache", Client(url), Trust(keys=(signer.public_key(),)), url)
    path = entry(tmp_path)
    path.write_text(
        json.dumps({"image_id": IMAGE, "digest": digest, "signed": text, "fetched_at": "t"})
    )
    with caplog.at_level(logging.WARNING, logger="lockd.watch"):
        assert cache.get(IMAGE) is None
    assert not path.exists()
    [said] = [r.getMessage() for r in caplog.records]
    assert said.startswith(f"{path}: the cached manifest is corrupt ({why.format(path=path)}")
    assert said.endswith("); removed, asking the service")
    known = cache.refresh(IMAGE)  # asked again: the bundle it serves is cached
    assert known.signed == parse_signed(json.dumps(json.loads(good.raw)).encode(), "b")
    assert json.loads(path.read_bytes())["signed"] == json.dumps(json.loads(good.raw))
    opened = cache.opened(known)
    assert opened is not None and opened.signature.status == "pass"


def _hostile(signer: keys.PrivateKey, answers: dict[str, object], case: str, url: str) -> str:
    """What a service that is not lockd's answers, by case; the error it must be refused with."""
    good = bundle_of(signer)
    digest = payload_digest(good)
    where = f"{url}/v1/manifests/{digest}"
    if case == "another payload":
        serve(answers, bundle_of(keys.generate_private_key()), digest="sha256:" + "e" * 64)
        return (
            f"{url}/v1/manifests/sha256:{'e' * 64}: the answer's payload is not sha256:{'e' * 64}"
        )
    serve(answers, good)
    if case == "a list that is not":
        answers["/v1/manifests"] = {"digest": digest}
        return f"{url}/v1/manifests: the answer is not a list of manifests; is --server a lockd service?"
    if case == "a manifest that is not":
        answers[f"/v1/manifests/{digest}"] = [1]
        return f"{where}: the answer is not a manifest; is --server a lockd service?"
    answers[f"/v1/manifests/{digest}"] = {"digest": digest, "bundle": {"mediaType": "x"}}
    return f"{where}: the answer carries no valid envelope ({where}: not a DSSE envelope: "


@pytest.mark.parametrize(
    "case", ["another payload", "a list that is not", "a manifest that is not", "no envelope"]
)
def test_what_no_lockd_service_answers_is_refused_and_nothing_cached(
    tmp_path: Path, signer: keys.PrivateKey, case: str, answering: tuple[str, dict[str, object]]
) -> None:
    url, answers = answering
    message = _hostile(signer, answers, case, url)
    cache = cache_in(tmp_path)
    cache = ManifestCache(cache.directory, Client(url), Trust(), url)
    with pytest.raises((ServerError, ServiceDownError)) as refused:  # the agent: as if away
        cache.refresh(IMAGE)
    assert str(refused.value).startswith(message)
    assert cache.get(IMAGE) is None and not entry(tmp_path).exists()
