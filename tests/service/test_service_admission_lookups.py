"""Bounded admission lookups, on both databases, against real misbehaving HTTP servers (#18,
finding 1): the registry fallback asks only the registries the admission config lists (no
SSRF), follows Links to the same origin only and for a capped number of pages, and a flood
against a registry that never finishes its answers holds no slot past its deadline (the
connections are closed), each allow-by-timeout audited and counted."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from bad_registry import bad_registry
from fastapi.testclient import TestClient
from service_fixtures import Signer
from service_helpers import Server, image, review

from lockd.server.routes.admission import MAX_IN_FLIGHT, StoreUnavailableError
from lockd.store.repository import Store
from lockd.trust.registry import Deadline

FLOOD = MAX_IN_FLIGHT + 8


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "admission.yaml"
    path.write_text("namespaces: {prod: {policy: default, mode: enforce}}\n" + text)
    return path


def fallback_to(
    make_client: Callable[..., TestClient], tmp_path: Path, host: str, more: str = ""
) -> TestClient:
    """A service on loopback whose admission reads attestations from ``host`` only."""
    text = f"registry_fallback: [{host and repr(host)}]\n{more}"
    return make_client(listen_host="127.0.0.1", admission_config=config(tmp_path, text))


def answer(client: TestClient, doc: dict[str, Any]) -> dict[str, Any]:
    got = client.post("/v1/admission", json=doc)
    assert got.status_code == 200, got.text
    response: dict[str, Any] = got.json()["response"]
    return response


@pytest.mark.parametrize("listed", ["", "reg.example:5000"])
def test_an_anonymous_review_cannot_make_the_service_connect_to_a_host_it_names(
    make_client: Callable[..., TestClient], tmp_path: Path, listed: str
) -> None:
    """The finding: with registry_fallback on, the service sent GETs to any host:port a review
    named. Now only the listed registries are asked (none by default)."""
    with bad_registry("plain") as target:
        client = fallback_to(make_client, tmp_path, listed)
        response = answer(client, review("Pod", [f"{target.host}/team/app@{image(5)}"]))
    assert response["allowed"] is False
    assert "no signed lockd manifest is stored for" in response["status"]["message"]
    assert target.seen.paths == []


def test_a_listed_registry_whose_link_points_back_to_itself_is_cut_off(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    with bad_registry("self-link") as registry:
        client = fallback_to(make_client, tmp_path, registry.host)
        response = answer(client, review("Pod", [f"{registry.host}/team/app@{image(6)}"]))
    assert response["allowed"] is False
    assert (
        f"no manifest is stored and the registry gave none: http://{registry.host}/v2/team/app/"
        "tags/list: more than 20 pages of tags; lockd reads no more"
    ) in response["status"]["message"]
    assert len([p for p in registry.seen.paths if "/tags/list" in p]) == 20


def test_a_listed_registry_cannot_send_the_service_to_another_origin(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    with (
        bad_registry("plain") as other,
        bad_registry("elsewhere", elsewhere=other.url) as registry,
    ):
        client = fallback_to(make_client, tmp_path, registry.host)
        response = answer(client, review("Pod", [f"{registry.host}/team/app@{image(7)}"]))
    assert response["allowed"] is False
    assert "the next page's Link points to another origin" in response["status"]["message"]
    assert other.seen.paths == []


def test_a_slow_registry_under_failure_closed_is_a_deny_and_its_connection_is_closed(
    make_client: Callable[..., TestClient], tmp_path: Path, store: Store
) -> None:
    with bad_registry("slowloris") as registry:
        client = fallback_to(make_client, tmp_path, registry.host, "deadline_s: 0.5\n")
        response = answer(client, review("Pod", [f"{registry.host}/team/app@{image(8)}"]))
        assert registry.wait_until_all_closed() == 0
    assert response["allowed"] is False
    assert response["status"]["message"].endswith(
        "lockd could not check the images (the store or a registry did not answer within "
        "0.5 s); failing closed"
    )
    assert registry.seen.closed_by_client == 1


def _post(url: str, doc: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url + "/v1/admission",
        data=json.dumps(doc).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as got:
        response: dict[str, Any] = json.loads(got.read())["response"]
        return response


def test_a_flood_against_a_registry_that_never_answers_holds_no_slot_past_its_deadline(
    database_url: str, signer: Signer, store: Store, tmp_path: Path
) -> None:
    """The finding: 33 reviews naming images on such a registry took all 32 lookup slots for
    good, and afterwards an unsigned image in an enforce namespace was allowed under
    failure: open. Now each lookup ends at its review's deadline (its connection closed), the
    flood is allowed by timeout, audited and counted as such, and the next review is decided
    by the store again."""
    with bad_registry("slowloris") as registry:
        admission = config(
            tmp_path,
            f"registry_fallback: ['{registry.host}']\ndeadline_s: 1\nfailure: open\n"
            "cache_ttl_s: 0\n",
        )
        env = {
            "LOCKD_DATABASE_URL": database_url,
            "LOCKD_TRUSTED_KEYS": str(signer.public),
            "LOCKD_ADMISSION_CONFIG": str(admission),
        }
        log = (tmp_path / "serve.log").open("wb")
        server = Server(env, log=log).start()
        try:
            docs = [
                review("Pod", [f"{registry.host}/team/app@{image(100 + i)}"], uid=f"flood-{i}")
                for i in range(FLOOD)
            ]
            with ThreadPoolExecutor(FLOOD) as pool:
                flood = list(pool.map(lambda doc: _post(server.url, doc), docs))
            assert registry.wait_until_all_closed() == 0
            unsigned = _post(server.url, review("Pod", [f"reg.example:5000/app@{image(999)}"]))
            with urllib.request.urlopen(server.url + "/metrics", timeout=30) as got:
                metrics = got.read().decode()
        finally:
            server.stop()
            log.close()
    assert [r for r in flood if not r["allowed"]] == []
    assert {r["warnings"][0].split(" within")[0] for r in flood} <= {
        "lockd could not check the images: the store or a registry did not answer",
        "lockd could not check the images: no lookup slot came free",
    }
    assert registry.seen.closed_by_client == len(registry.seen.paths) > 0
    assert unsigned["allowed"] is False
    assert "no signed lockd manifest is stored for" in unsigned["status"]["message"]
    counted = re.search(r"^lockd_admission_allowed_unchecked_total (\S+)$", metrics, re.M)
    assert counted is not None and float(counted.group(1)) == FLOOD
    actions = [e.action for e in store.audit_entries()]
    assert actions.count("admission.allow_unchecked") == FLOOD
    assert actions[-1] == "admission.deny"


def test_a_registry_lookup_out_of_time_is_unavailable_never_a_verdict(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    """A lookup whose deadline passed while it ran says the registry did not answer in time
    (the failure mode decides), rather than a deny as if the registry had no attestation."""
    with bad_registry("plain") as registry:
        client = fallback_to(make_client, tmp_path, registry.host, "deadline_s: 0.5\n")
        gate = client.app.state.admission  # type: ignore[attr-defined]
        deadline = Deadline(60.0)
        deadline.abandon()
        ref = f"{registry.host}/team/app@{image(9)}"
        with pytest.raises(StoreUnavailableError) as raised:
            gate.verdict(image(9), "default", ref, deadline)
    assert str(raised.value) == "the store or a registry did not answer within 0.5 s"
    assert registry.seen.paths == []
