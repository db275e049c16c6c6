"""The audit actor of a client certificate (#18): one line, one certificate, fits the column.
A subject's newline forged a second line where the log is shown, and the column's cut at 64
characters gave two certificates sharing their first 60 one actor."""

from __future__ import annotations

import hashlib

import pytest

from lockd.server.deps import ACTOR_LENGTH, certificate_actor


@pytest.mark.parametrize(
    ("subject", "actor"),
    [
        ("CN=kube-apiserver", "tls:CN=kube-apiserver"),
        ("CN=é k8s", "tls:CN=é k8s"),
        ("CN=a\n2026-12-07 admin", "tls:CN=a\\0a2026-12-07 admin"),
        ("CN=\x1b[31mred\x7f", "tls:CN=\\1b[31mred\\7f"),
        ("CN=\u202eevil\u0085", "tls:CN=\\e2\\80\\aeevil\\c2\\85"),
        ("CN=kube\\00apiserver", "tls:CN=kube\\00apiserver"),  # RFC 4514's own escape, kept
    ],
)
def test_control_characters_are_escaped_as_hex_pairs(subject: str, actor: str) -> None:
    assert certificate_actor(subject) == actor


def test_a_subject_too_long_for_the_column_is_cut_and_ends_with_its_digest() -> None:
    first = "OU=" + "A" * 100
    second = first + "B"
    actors = {certificate_actor(first), certificate_actor(second)}
    assert len(actors) == 2
    for actor in actors:
        assert len(actor) == ACTOR_LENGTH
        assert actor.startswith("tls:OU=" + "A" * 40 + "~")
    assert certificate_actor(first) == "tls:OU=" + "A" * 40 + "~1656ca0e5b806a2b"


def test_a_subject_that_fits_exactly_is_not_cut() -> None:
    subject = "CN=" + "x" * (ACTOR_LENGTH - len("tls:CN="))
    assert certificate_actor(subject) == "tls:" + subject
    longer = subject + "y"
    digest = hashlib.sha256(longer.encode()).hexdigest()[:16]
    assert certificate_actor(longer) == f"tls:{longer[: ACTOR_LENGTH - 21]}~{digest}"
