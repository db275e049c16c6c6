"""lockd.attestations: which attestation `lockd verify --registry` takes (the newest trusted one
that names the image), the image references it reads, and the reports it makes. No registry:
fetching is handed in (the real registry is tests/integration/test_registry.py)."""

from __future__ import annotations

import pytest
from observations import host, manifest, observation

from lockd.attestations import Attestation, choose, registry_images, verify_attested
from lockd.errors import InputError
from lockd.judgement.policy import default_policy
from lockd.model.host import TargetInfo
from lockd.model.manifest import Observation
from lockd.trust import dsse, keys
from lockd.trust.statement import PAYLOAD_TYPE, make_statement

REF = "registry.example:5000/team/app@sha256:" + "d" * 64
DIGEST = REF.rpartition("@")[2]
TRUSTED = keys.generate_private_key()
STRANGER = keys.generate_private_key()


def pushed() -> Observation:
    """The test observation, its image pushed: REF is one of its repo digests."""
    return observation(host_evidence=host(repo_digests=[REF, "app@sha256:" + "e" * 64]))


def envelope(
    key: keys.PrivateKey = TRUSTED,
    at: str = "2026-11-28T07:00:00+00:00",
    obs: Observation | None = None,
) -> dsse.Envelope:
    recorded = manifest(obs or pushed()).model_copy(update={"recorded_at": at})
    return dsse.sign(make_statement(recorded), PAYLOAD_TYPE, key)


def found(name: str, env: dsse.Envelope, digest: str = DIGEST) -> Attestation:
    return Attestation(name, digest, env)


def test_the_newest_trusted_attestation_is_chosen() -> None:
    old = found("old", envelope(at="2026-01-01T00:00:00+00:00"))
    new = found("new", envelope(at="2026-06-01T00:00:00+00:00"))
    newest_untrusted = found("stranger", envelope(STRANGER, at="2027-01-01T00:00:00+00:00"))
    choice, reasons = choose([old, newest_untrusted, new], [TRUSTED.public_key()])
    assert choice is not None
    assert (choice.where, choice.trusted) == ("new", 2)
    assert choice.keyids == [keys.keyid(TRUSTED.public_key())]
    assert choice.manifest.recorded_at == "2026-06-01T00:00:00+00:00"
    assert reasons == ["stranger: not signed by a trusted key"]


def test_equals_keep_their_order_and_other_offsets_compare_as_instants() -> None:
    first = found("first", envelope(at="2026-06-01T02:00:00+02:00"))  # 00:00 UTC
    second = found("second", envelope(at="2026-06-01T00:00:00+00:00"))
    choice, _ = choose([first, second], [TRUSTED.public_key()])
    assert choice is not None and choice.where == "first"
    later = found("later", envelope(at="2026-06-01T01:00:00+00:00"))
    choice, _ = choose([first, later], [TRUSTED.public_key()])
    assert choice is not None and choice.where == "later"


def test_an_attestation_of_another_image_or_not_lockds_is_not_eligible() -> None:
    elsewhere = found("elsewhere", envelope(), digest="sha256:" + "f" * 64)
    foreign = found("foreign", dsse.sign(b'{"_type": "other"}', PAYLOAD_TYPE, TRUSTED))
    choice, reasons = choose([elsewhere, foreign], [TRUSTED.public_key()])
    assert choice is None
    assert reasons == [
        f"elsewhere: its subjects do not include sha256:{'f' * 64}",
        "foreign: the payload is not an in-toto Statement v1",
    ]


def test_registry_images_are_the_repo_digests_with_a_registry_host() -> None:
    assert registry_images(pushed()) == [REF]  # Docker Hub's short name is left out


def test_a_local_target_or_an_image_in_no_registry_is_a_usage_error() -> None:
    local = Observation(target=TargetInfo(kind="local", ref="/usr/bin/python3"))
    with pytest.raises(InputError) as caught:
        registry_images(local)
    assert str(caught.value) == (
        "--registry: local /usr/bin/python3 has no image; give --manifest FILE"
    )
    assert caught.value.exit_code == 2
    built_here = observation(host_evidence=host(repo_digests=[]))
    with pytest.raises(InputError) as caught:
        registry_images(built_here)
    assert str(caught.value) == (
        f"--registry: the image of {built_here.target.kind} {built_here.target.ref} has no repo "
        "digest in a registry (REGISTRY/REPOSITORY@sha256:…): push it, run it from the pushed "
        "reference, or give --manifest FILE"
    )
    assert caught.value.exit_code == 2


def test_verify_attested_compares_with_the_chosen_manifest() -> None:
    target = pushed()
    stored = [found("a", envelope(obs=target))]
    report = verify_attested(
        target, [TRUSTED.public_key()], default_policy(), fetch=lambda _: stored
    )
    assert report.verified is True
    assert report.manifest.path == "a"
    assert report.checks[0].message == (
        f"signed by keyid {keys.keyid(TRUSTED.public_key())[:16]}; the newest of 1 trusted "
        "attestation(s) in the registry"
    )


def test_verify_attested_without_a_trusted_attestation_is_not_verified() -> None:
    trusted = [TRUSTED.public_key()]
    report = verify_attested(pushed(), trusted, default_policy(), fetch=lambda _: [])
    assert not report.verified
    assert report.checks[0].message == (
        f"no lockd attestation is stored next to {REF}; record the image and attach the "
        "manifest there (lockd attach IMAGE@DIGEST ENVELOPE)"
    )
    assert {c.status for c in report.checks[1:]} == {"skip"}
    assert report.checks[1].message == "not compared: the manifest's signature is not trusted"


def test_many_untrusted_attestations_are_counted_not_all_listed() -> None:
    many = [found(f"stranger-{i}", envelope(STRANGER)) for i in range(40)]
    report = verify_attested(
        pushed(), [TRUSTED.public_key()], default_policy(), fetch=lambda _: many
    )
    listed = "; ".join(f"stranger-{i}: not signed by a trusted key" for i in range(5))
    assert report.checks[0].message == (
        f"none of the 40 attestation(s) next to {REF} is signed by a trusted key and names the "
        f"image: {listed}; and 35 more"
    )
