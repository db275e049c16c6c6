"""The OCI registry client against real misbehaving HTTP servers on loopback: which hosts are
plain HTTP, Link pagination (same origin, a page cap), and a deadline that closes the
connection of a registry that never finishes its answer."""

from __future__ import annotations

import threading

import pytest
from bad_registry import bad_registry

from lockd.trust.registry import MAX_TAG_PAGES, Deadline, Registry, RegistryError, is_loopback


@pytest.mark.parametrize(
    ("host", "plain"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.8.9.10", True),
        ("[::1]:5000", True),
        ("[::1]", True),
        ("localhost.evil.example", False),
        ("localhost.evil.example:5000", False),
        ("127.evil.example", False),
        ("127.0.0.1.evil.example:5000", False),
        ("[::2]:5000", False),
        ("128.0.0.1:5000", False),
        ("reg.example:5000", False),
    ],
)
def test_only_exact_loopback_addresses_are_plain_http(host: str, plain: bool) -> None:
    assert is_loopback(host) is plain
    assert Registry(host).base == ("http://" if plain else "https://") + host


def test_a_link_back_to_itself_stops_at_the_page_cap() -> None:
    with bad_registry("self-link") as registry:
        client = Registry(registry.host)
        with pytest.raises(RegistryError) as raised:
            list(client.tags("team/app"))
    assert str(raised.value) == (
        f"http://{registry.host}/v2/team/app/tags/list: more than {MAX_TAG_PAGES} pages of "
        "tags; lockd reads no more"
    )
    assert len(registry.seen.paths) == MAX_TAG_PAGES


def test_a_link_to_another_origin_is_not_followed() -> None:
    with (
        bad_registry("plain") as other,
        bad_registry("elsewhere", elsewhere=other.url) as bad,
        pytest.raises(RegistryError) as raised,
    ):
        list(Registry(bad.host).tags("team/app"))
    assert str(raised.value) == (
        f"http://{bad.host}/v2/team/app/tags/list: the next page's Link points to another "
        f"origin ({other.url}/v2/team/app/tags/list?n=1000); only http://{bad.host} is followed"
    )
    assert other.seen.paths == []
    assert bad.seen.paths == ["/v2/team/app/tags/list?n=1000"]


def test_abandoning_the_deadline_closes_the_connection_of_a_registry_that_never_finishes() -> None:
    with bad_registry("slowloris") as registry:
        deadline = Deadline(300.0)  # far away: only abandon() ends the lookup here
        client = Registry(registry.host, deadline=deadline)
        failed: list[BaseException] = []

        def lookup() -> None:
            try:
                client.manifest("team/app", "v1")
            except RegistryError as e:
                failed.append(e)

        thread = threading.Thread(target=lookup, daemon=True)
        thread.start()
        while not registry.seen.open:  # the registry is dribbling its answer
            thread.join(0.01)
        deadline.abandon()
        thread.join(30)
        assert not thread.is_alive()
        assert registry.wait_until_all_closed() == 0
    assert registry.seen.closed_by_client == 1
    assert [str(e) for e in failed] == [
        f"GET http://{registry.host}/v2/team/app/manifests/v1: the lookup's deadline passed; "
        "it was abandoned"
    ]


def test_a_passed_deadline_makes_no_request() -> None:
    with bad_registry("plain") as registry:
        deadline = Deadline(60.0)
        deadline.abandon()
        with pytest.raises(RegistryError, match="the lookup's deadline passed; it was abandoned"):
            Registry(registry.host, deadline=deadline).manifest("team/app", "v1")
    assert registry.seen.paths == []


MANIFEST = "/v2/team/app/manifests/sha256:" + "0" * 64
BLOB = "/v2/team/app/blobs/sha256:" + "0" * 64


@pytest.mark.parametrize("deadline", [None, 30.0], ids=["cli", "admission"])
@pytest.mark.parametrize("path", [MANIFEST, BLOB], ids=["manifest", "blob-over-http"])
def test_a_redirect_to_another_origin_is_not_followed(deadline: float | None, path: str) -> None:
    """A listed registry's 302 to another host (an address inside the cluster, ftp://) was
    followed and its answer taken; a blob may leave the origin over HTTPS only."""
    with (
        bad_registry("plain") as other,
        bad_registry("redirect", elsewhere=other.url) as bad,
    ):
        client = Registry(bad.host, deadline=None if deadline is None else Deadline(deadline))
        with pytest.raises(RegistryError) as raised:
            client.request("GET", path)
    assert str(raised.value) == (
        f"GET http://{bad.host}{path}: the registry redirected to another origin "
        f"({other.url}{path}?moved=1); lockd follows redirects within the registry's origin, "
        "and to another only for a blob, over HTTPS"
    )
    assert other.seen.paths == []
    assert bad.seen.paths == [path]


@pytest.mark.parametrize("deadline", [None, 30.0], ids=["cli", "admission"])
def test_a_redirect_within_the_origin_is_followed(deadline: float | None) -> None:
    with bad_registry("redirect") as registry:
        client = Registry(registry.host, deadline=None if deadline is None else Deadline(deadline))
        assert client.manifest("team/app", "sha256:" + "0" * 64) == (b"[]", "application/json")
    assert registry.seen.paths == [MANIFEST, MANIFEST + "?moved=1"]
