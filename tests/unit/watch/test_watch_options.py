"""`lockd watch`'s options: durations, label selectors, host names, addresses; bad values are
errors that name the option (exit 2), checked before the daemon or the service is asked."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sigstore_assets import ISSUER, KEYLESS, ROOT, WHO

from lockd.errors import InputError
from lockd.watch.options import (
    Selector,
    WatchOptions,
    check_host,
    parse_address,
    parse_interval,
    parse_selectors,
)

Lockd = Callable[..., subprocess.CompletedProcess[str]]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60.0), ("60", 60.0), ("5m", 300.0), ("1h", 3600.0), ("1500ms", 1.5), (" 2s ", 2.0)],
)
def test_intervals(text: str, seconds: float) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--interval '': give a duration such as 60s, 5m or 1h"),
        ("soon", "--interval 'soon': give a duration such as 60s, 5m or 1h"),
        ("-5s", "--interval '-5s': give a duration such as 60s, 5m or 1h"),
        ("1d", "--interval '1d': give a duration such as 60s, 5m or 1h"),
        ("500ms", "--interval '500ms': give between 1s and 24h"),
        ("25h", "--interval '25h': give between 1s and 24h"),
    ],
)
def test_bad_intervals(text: str, message: str) -> None:
    with pytest.raises(InputError) as raised:
        parse_interval(text)
    assert str(raised.value) == message


def test_selectors() -> None:
    selectors = parse_selectors(["team=ml,gpu", "lockd.dev/watch=yes", "empty="])
    assert selectors == (
        Selector("team", "ml"),
        Selector("gpu"),
        Selector("lockd.dev/watch", "yes"),
        Selector("empty", ""),
    )
    labels = {"team": "ml", "gpu": "", "lockd.dev/watch": "yes", "empty": ""}
    assert all(s.matches(labels) for s in selectors)
    assert not Selector("team", "web").matches(labels)
    assert not Selector("missing").matches(labels)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("team!=ml", "--label-selector 'team!=ml': only key=value and key are supported, not !="),
        (
            "a=b,,c",
            "--label-selector 'a=b,,c': '' is not key=value or key (keys: letters, digits, "
            "'.', '_', '/', '-')",
        ),
        (
            "=x",
            "--label-selector '=x': '=x' is not key=value or key (keys: letters, digits, "
            "'.', '_', '/', '-')",
        ),
    ],
)
def test_bad_selectors(spec: str, message: str) -> None:
    with pytest.raises(InputError) as raised:
        parse_selectors([spec])
    assert str(raised.value) == message


def test_hosts_and_addresses() -> None:
    assert check_host("node-1.example_a") == "node-1.example_a"
    with pytest.raises(InputError) as raised:
        check_host("node 1")
    assert str(raised.value) == (
        "--host 'node 1': give 1 to 253 letters, digits, '.', '_' or '-' (this host's name as "
        "the fleet view shows it)"
    )
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", "host:", "host:99999", ":9464"):
        with pytest.raises(InputError) as raised:
            parse_address(bad)
        assert str(raised.value) == (f"--metrics-addr {bad!r}: give HOST:PORT, e.g. 127.0.0.1:9464")


def test_bad_numbers() -> None:
    with pytest.raises(InputError) as raised:
        WatchOptions(server="http://x", host="h", probe_timeout_s=0)
    assert str(raised.value) == "--probe-timeout 0: give seconds between 0 and 3600"
    with pytest.raises(InputError) as raised:
        WatchOptions(server="http://x", host="h", concurrency=0)
    assert str(raised.value) == "--concurrency 0: give 1 to 64"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --server URL (or set LOCKD_SERVER)"),
        (
            ["--server", "http://127.0.0.1:1", "--interval", "0s"],
            "--interval '0s': give between 1s and 24h",
        ),
        (["--server", "http://127.0.0.1:1", "--host", "a/b"], "--host 'a/b': give 1 to 253"),
        (
            ["--server", "http://127.0.0.1:1", "--metrics-addr", "x"],
            "--metrics-addr 'x': give HOST:PORT",
        ),
        (["--server", "ftp://x"], "--server 'ftp://x': give the service's URL"),
        (
            ["--server", "http://127.0.0.1:1", "--policy", "nosuch"],
            "nosuch: no such policy file or policy name",
        ),
        (["--server", "http://127.0.0.1:1", "--key", "/nonexistent.pub"], "/nonexistent.pub"),
        (
            ["--server", "http://127.0.0.1:1", "--certificate-identity", "ci@example.org"],
            "keyless verification: give the OIDC issuer (--certificate-oidc-issuer)",
        ),
        (
            [
                *("--server", "http://127.0.0.1:1", "--certificate-oidc-issuer", "https://x"),
                *("--certificate-identity-regexp", "("),
            ],
            "keyless verification: '(' is not a regular expression (missing ), unterminated "
            "subpattern at position 0)",
        ),
        (
            ["--server", "http://127.0.0.1:1", "--key", "/dev/null", "--trusted-root", ROOT],
            "--trusted-root is for keyless signatures: give --certificate-identity (or "
            "--certificate-identity-regexp) and --certificate-oidc-issuer with it",
        ),
        (
            [
                *("--server", "http://127.0.0.1:1", "--certificate-oidc-issuer", ISSUER),
                *("--certificate-identity", WHO, "--trusted-root", KEYLESS),
            ],
            f"{KEYLESS}: not a Sigstore trusted root lockd can use: ",
        ),
    ],
)
def test_bad_command_lines_exit_2_naming_the_option(
    lockd: Lockd, tmp_path: Path, args: list[str], message: str
) -> None:
    result = lockd("watch", "--once", "--spool", tmp_path / "spool", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in " ".join(result.stderr.split())


def test_a_corrupt_spool_exits_2_before_watching(lockd: Lockd, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "sequence").write_text("lots\n")
    result = lockd("watch", "--once", "--server", "http://127.0.0.1:1", "--spool", spool)
    assert result.returncode == 2
    assert f"{spool}/sequence: corrupt sequence number 'lots'" in " ".join(result.stderr.split())


@pytest.mark.parametrize(
    ("env", "code", "message"),
    [
        (
            {"DOCKER_HOST": "unix:///nonexistent.sock"},
            3,
            "cannot reach the Docker daemon (unix:///nonexistent.sock): No such file or "
            "directory. Start it (e.g. `sudo systemctl start docker`, or `dockerd &` as root) "
            "or set DOCKER_HOST.",
        ),
        (
            {"DOCKER_HOST": "ssh://builder"},
            2,
            "DOCKER_HOST='ssh://builder': lockd watch speaks unix:///path/to/docker.sock or "
            "tcp://HOST:PORT (plain HTTP; for TLS or ssh, run it beside the daemon)",
        ),
        (
            {"DOCKER_HOST": "tcp://127.0.0.1:2376", "DOCKER_TLS_VERIFY": "1"},
            2,
            "DOCKER_HOST='tcp://127.0.0.1:2376': lockd watch speaks "
            "unix:///path/to/docker.sock or tcp://HOST:PORT (plain HTTP; for TLS or ssh, run it "
            "beside the daemon)",
        ),
    ],
)
def test_no_daemon_to_watch(
    lockd: Lockd, tmp_path: Path, env: dict[str, str], code: int, message: str
) -> None:
    result = lockd(
        "watch", "--once", "--server", "http://127.0.0.1:1", "--spool", tmp_path, env=env
    )  # fmt: skip
    assert result.returncode == code
    assert message in " ".join(result.stderr.split())
