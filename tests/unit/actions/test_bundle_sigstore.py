"""An audit bundle of a manifest pushed to the service as a Sigstore bundle: it carries the
bundle as stored (its digest is the one the audit log chained) and verifies offline."""

from __future__ import annotations

import json

from bundles import ENVELOPE, KEY, chain, sample_files

from lockd.bundle import check_files
from lockd.trust import dsse, keys
from lockd.trust.signed import signed_from
from lockd.trust.sigstore_bundle import key_bundle

# what the service stores for a pushed bundle, byte for byte (lockd.trust.signed.signed_from)
STORED = signed_from(
    json.loads(key_bundle(dsse.parse_envelope(ENVELOPE, "e"), keys.keyid(KEY))), "pushed"
).to_json()


def test_an_audit_bundle_carries_the_sigstore_bundle_and_verifies() -> None:
    files = sample_files(envelope=STORED, entries=chain(STORED))
    assert files["envelope.dsse.json"] == STORED
    verdict = check_files(files)
    assert verdict.ok, verdict.checks
    assert verdict.keyids == [keys.keyid(KEY)]


def test_an_altered_sigstore_bundle_fails_the_signature_check() -> None:
    doc = json.loads(STORED)
    doc["dsseEnvelope"]["payloadType"] = "text/plain"
    altered = json.dumps(doc).encode()
    files = sample_files(envelope=STORED, entries=chain(STORED))
    verdict = check_files({**files, "envelope.dsse.json": altered})
    assert not verdict.ok
    [signature] = [c for c in verdict.checks if c.id == "signature"]
    assert signature.message.startswith(
        "envelope.dsse.json: envelope signature does not verify against any trusted key"
    )
