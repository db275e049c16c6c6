"""The service client against real HTTP servers on loopback: a redirect to another origin never
carries the bearer token; one to the same origin keeps it."""

from __future__ import annotations

import pytest
from bad_registry import bad_registry

from lockd.client import Client, origin

SUBJECT = "sha256:" + "a" * 64
ASKED = f"/v1/manifests?subject=sha256%3A{'a' * 64}"


def test_a_redirect_to_another_origin_drops_the_bearer_token() -> None:
    with (
        bad_registry("plain") as elsewhere,
        bad_registry("redirect", elsewhere=elsewhere.url) as home,
    ):
        assert Client(home.url, "s3cret").manifests_for(SUBJECT) == []
    assert home.seen.paths == [ASKED]
    assert home.seen.authorization == ["Bearer s3cret"]
    assert elsewhere.seen.paths == [ASKED + "&moved=1"]
    assert elsewhere.seen.authorization == [None]


def test_a_redirect_to_the_same_origin_keeps_the_bearer_token() -> None:
    with bad_registry("redirect") as home:
        assert Client(home.url, "s3cret").manifests_for(SUBJECT) == []
    assert home.seen.paths == [ASKED, ASKED + "&moved=1"]
    assert home.seen.authorization == ["Bearer s3cret", "Bearer s3cret"]


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("http://127.0.0.1:8080/a", "http://127.0.0.1:8080/b?x=1", True),
        ("http://127.0.0.1:8080/a", "http://127.0.0.1:8081/a", False),
        ("http://lockd.example/a", "http://lockd.example.evil.example/a", False),
        ("https://lockd.example/a", "http://lockd.example/a", False),
        ("http://LOCKD.example/a", "http://lockd.example:80/b", True),
        ("https://lockd.example/", "https://lockd.example:443/", True),
    ],
)
def test_origin(first: str, second: str, same: bool) -> None:
    assert (origin(first) == origin(second)) is same
