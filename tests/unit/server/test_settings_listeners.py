"""The listeners' settings from the environment (LOCKD_HOST, LOCKD_TLS_*, LOCKD_ADMISSION_PORT,
LOCKD_CLIENT_CA, LOCKD_ADMISSION_IDENTITY, LOCKD_INSECURE_ADMISSION): good values read, bad and
hostile ones refused with the exact message, and which listen addresses count as loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockd.errors import InputError
from lockd.server.deps import is_loopback_host
from lockd.server.settings import Settings

BASE = {"LOCKD_DATABASE_URL": "sqlite://"}
LISTENER = {
    "LOCKD_TLS_CERT": "/tls/tls.crt",
    "LOCKD_TLS_KEY": "/tls/tls.key",
    "LOCKD_CLIENT_CA": "/ca/ca.crt",
}


def test_the_listener_settings_are_read() -> None:
    settings = Settings.from_env(
        {
            **BASE,
            **LISTENER,
            "LOCKD_HOST": "0.0.0.0",
            "LOCKD_ADMISSION_PORT": "8443",
            "LOCKD_ADMISSION_IDENTITY": "apiserver@cluster-1",
            "LOCKD_INSECURE_ADMISSION": "no",
        }
    )
    assert (settings.listen_host, settings.admission_port, settings.admission_identity) == (
        "0.0.0.0",
        8443,
        "apiserver@cluster-1",
    )
    assert (settings.tls_cert, settings.tls_key, settings.client_ca) == (
        Path("/tls/tls.crt"),
        Path("/tls/tls.key"),
        Path("/ca/ca.crt"),
    )
    assert settings.insecure_admission is False
    default = Settings.from_env(BASE)
    assert (default.listen_host, default.tls_cert, default.admission_port) == (None, None, None)
    assert default.admission_identity == "kube-apiserver"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"LOCKD_TLS_KEY": "k"},
            "give both --tls-cert and --tls-key (LOCKD_TLS_CERT, LOCKD_TLS_KEY)",
        ),
        (
            {"LOCKD_TLS_CERT": "c", "LOCKD_TLS_KEY": "k", "LOCKD_ADMISSION_PORT": "8443"},
            "--admission-port needs --tls-cert, --tls-key and --client-ca: the admission listener "
            "requires a client certificate (LOCKD_ADMISSION_PORT, LOCKD_CLIENT_CA)",
        ),
        (
            {**LISTENER},
            "--client-ca is used by the admission listener only: give --admission-port too",
        ),
        ({**LISTENER, "LOCKD_ADMISSION_PORT": "x"}, "LOCKD_ADMISSION_PORT='x': give a number"),
        (
            {**LISTENER, "LOCKD_ADMISSION_PORT": "70000"},
            "LOCKD_ADMISSION_PORT: Input should be less than or equal to 65535",
        ),
        (
            {**LISTENER, "LOCKD_ADMISSION_PORT": "0"},
            "LOCKD_ADMISSION_PORT: Input should be greater than or equal to 1",
        ),
        (
            {**LISTENER, "LOCKD_ADMISSION_PORT": "8443.5"},
            "LOCKD_ADMISSION_PORT: Input should be a valid integer, got a number with a "
            "fractional part",
        ),
        (
            {"LOCKD_ADMISSION_IDENTITY": "kube apiserver\nadmin"},
            "LOCKD_ADMISSION_IDENTITY: String should match pattern "
            "'^[A-Za-z0-9][A-Za-z0-9._@:-]{0,47}$'",
        ),
        (
            {"LOCKD_INSECURE_ADMISSION": "maybe"},
            "LOCKD_INSECURE_ADMISSION='maybe': give 1/true/yes/on or 0/false/no/off",
        ),
    ],
)
def test_bad_listener_settings_are_refused_saying_which(env: dict[str, str], message: str) -> None:
    with pytest.raises(InputError) as raised:
        Settings.from_env({**BASE, **env})
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        (None, False),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.7", False),
        ("localhost.evil.example", False),
        ("127.evil.example", False),
        ("", False),
    ],
)
def test_which_listen_addresses_are_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
