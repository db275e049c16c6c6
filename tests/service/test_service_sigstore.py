"""The service takes Sigstore bundles where it takes envelopes: a key-based bundle pushed is
stored as it came, served back beside its envelope, and judged like the envelope."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import Signer, Tokens
from service_helpers import envelope, image, observation, observation_json

from lockd.errors import InputError
from lockd.server.settings import Settings
from lockd.trust.keyless import Identity
from lockd.trust.sigstore_bundle import key_bundle


def _bundle(signer: Signer, n: int = 1) -> dict[str, object]:
    doc: dict[str, object] = json.loads(
        key_bundle(envelope(signer.key, observation(image(n))), signer.keyid)
    )
    return doc


def test_a_pushed_bundle_is_stored_served_and_judged(
    make_client: Callable[..., TestClient], tokens: Tokens, signer: Signer
) -> None:
    client = make_client()
    bundle = _bundle(signer)
    pushed = client.post("/v1/manifests", json=bundle, headers=tokens.header("recorder"))
    assert pushed.status_code == 201, pushed.text
    assert pushed.json()["keyids"] == [signer.keyid]
    digest = pushed.json()["digest"]

    for page in ("/", f"/m/{digest}"):  # the pages read the stored bundle too
        shown = client.get(page, headers=tokens.header("reader"))
        assert shown.status_code == 200, shown.text
        assert "app:1" in shown.text
    detail = client.get(f"/v1/manifests/{digest}", headers=tokens.header("reader")).json()
    assert detail["bundle"] == bundle
    assert detail["envelope"]["payload"] == bundle["dsseEnvelope"]["payload"]  # type: ignore[index]

    fresh = make_client()  # reads the stored bundle back (trusted_manifest, as admission does)
    answer = fresh.post(
        "/v1/verifications",
        json={"observation": observation_json(observation(image(1)))},
        headers=tokens.header("recorder"),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["checks"][0]["message"] == f"signed by keyid {signer.keyid}"
    assert answer.json()["verified"] is True


def test_a_tampered_or_foreign_bundle_is_refused(
    client: TestClient, tokens: Tokens, signer: Signer, stranger: Signer
) -> None:
    tampered = _bundle(signer)
    dsse = tampered["dsseEnvelope"]
    assert isinstance(dsse, dict)
    payload = base64.b64decode(dsse["payload"]).replace(b"pkg-1", b"pkg-9")
    dsse["payload"] = base64.b64encode(payload).decode()
    refused = client.post("/v1/manifests", json=tampered, headers=tokens.header("recorder"))
    assert refused.status_code == 422
    assert refused.json()["detail"].startswith(
        "the envelope: envelope signature does not verify against any trusted key"
    )
    foreign = client.post(
        "/v1/manifests", json=_bundle(stranger), headers=tokens.header("recorder")
    )
    assert foreign.status_code == 422
    bad = dict(_bundle(signer), verificationMaterial={})
    malformed = client.post("/v1/manifests", json=bad, headers=tokens.header("recorder"))
    assert malformed.status_code == 422
    assert malformed.json()["detail"] == (
        "the request body: not a Sigstore bundle lockd reads: verificationMaterial needs exactly "
        "one of publicKey, certificate, x509CertificateChain (it has none)"
    )
    listed = client.get("/v1/manifests", headers=tokens.header("reader")).json()
    assert listed == []


ASSETS = Path(__file__).resolve().parents[1] / "assets" / "sigstore"
ISSUER = "https://github.com/login/oauth"


@pytest.mark.parametrize(
    ("who", "detail"),
    [
        (
            "william@yossarian.net",
            "the envelope's payload: predicateType is "
            "'https://docs.pypi.org/attestations/publish/v1', not lockd's (",
        ),
        (
            "ci@example.org",
            "the envelope: keyless signature refused: the certificate names "
            "william@yossarian.net (issuer https://github.com/login/oauth), not a trusted "
            "identity (ci@example.org (issuer https://github.com/login/oauth))",
        ),
    ],
    ids=["trusted signer, not a lockd manifest", "untrusted signer"],
)
def test_a_keyless_bundle_is_checked_under_the_trusted_identities(
    make_client: Callable[..., TestClient], tokens: Tokens, who: str, detail: str
) -> None:
    client = make_client(
        trusted_identities=(Identity(ISSUER, identity=who),),
        trusted_root=ASSETS / "staging-trusted_root.json",
    )
    bundle = json.loads((ASSETS / "pypi-attestation-staging.sigstore.json").read_text())
    refused = client.post("/v1/manifests", json=bundle, headers=tokens.header("recorder"))
    assert refused.status_code == 422
    assert refused.json()["detail"].startswith(detail)
    assert client.get("/v1/manifests", headers=tokens.header("reader")).json() == []


def test_trusted_identities_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "LOCKD_DATABASE_URL": "sqlite:///x.db",
            "LOCKD_TRUSTED_IDENTITIES": json.dumps([{"issuer": ISSUER, "identity": "a@b.org"}]),
            "LOCKD_TRUSTED_ROOT": "/etc/lockd/trusted_root.json",
        }
    )
    assert settings.trusted_identities == (Identity(ISSUER, identity="a@b.org"),)
    assert settings.trusted_root == Path("/etc/lockd/trusted_root.json")
    with pytest.raises(InputError, match=r"^LOCKD_TRUSTED_IDENTITIES\[0\]: unknown field"):
        Settings.from_env({"LOCKD_TRUSTED_IDENTITIES": '[{"issuer": "x", "who": "y"}]'})
