"""lockd.cli.early: which command lines start verify's observation before Typer converts the
arguments (pure: the option table comes from the verify command itself)."""

from __future__ import annotations

import pytest
import typer

from lockd import cli
from lockd.cli.early import EarlyVerify, OptionSpec, options_of, recognise


@pytest.fixture(scope="module")
def options() -> dict[str, OptionSpec]:
    command = typer.main.get_command(cli.app)
    assert isinstance(command, typer.core.TyperGroup)
    return options_of(command.commands["verify"].params)


def test_the_option_table_is_verify_s_own(options: dict[str, OptionSpec]) -> None:
    assert options["--manifest"] == OptionSpec(dest="manifest", flag=False)
    assert options["--key"] == OptionSpec(dest="key", flag=False)
    assert options["--gpu"] == OptionSpec(dest="gpu", flag=True)
    assert options["--no-cache"] == OptionSpec(dest="no_cache", flag=True)
    assert "--help" not in options


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["verify", "web-1", "--manifest", "m.json", "--key", "k.pub"],
            EarlyVerify("web-1", None, False, ("m.json", "k.pub")),
        ),
        (
            ["verify", "--key=a.pub", "--key", "b.pub", "image:x", "--manifest=m.json", "--gpu"],
            EarlyVerify("image:x", None, True, ("m.json", "a.pub", "b.pub")),
        ),
        (
            ["verify", "w", "--manifest", "m", "--key", "k", "--python", "a", "--python=b"],
            EarlyVerify("w", "b", False, ("m", "k")),  # the last one wins, as in Click
        ),
        (
            ["verify", "w", "--manifest", "m", "--key", "k", "--json", "--policy", "audit"],
            EarlyVerify("w", None, False, ("m", "k")),
        ),
    ],
)
def test_a_plain_verify_is_recognised(
    options: dict[str, OptionSpec], args: list[str], expected: EarlyVerify
) -> None:
    assert recognise(args, options) == expected


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["record", "web-1", "--key", "k.key"],
        ["verify", "web-1", "--key", "k.pub"],  # no --manifest: the service or a registry
        ["verify", "web-1", "--manifest", "m.json"],  # no --key: Typer says so
        ["verify", "web-1", "--manifest", "m.json", "--key", "k.pub", "--deep"],
        ["verify", "web-1", "--manifest", "m.json", "--key", "k.pub", "--registry"],
        ["verify", "web-1", "--manifest", "m.json", "--key", "k.pub", "--no-cache"],
        ["verify", "web-1", "--manifest", "m.json", "--key", "k.pub", "--help"],
        ["verify", "web-1", "extra", "--manifest", "m.json", "--key", "k.pub"],
        ["verify", "--manifest", "m.json", "--key", "k.pub"],  # no target
        ["verify", "web-1", "--manifest", "m.json", "--key", "k.pub", "--no-such-option"],
        ["verify", "web-1", "--key", "k.pub", "--manifest"],  # a value missing
        ["verify", "web-1", "--manifest", "a", "--manifest", "b", "--key", "k"],
        ["verify", "web-1", "--manifest", "m", "--key", "k", "--gpu=yes"],
        ["verify", "--", "web-1", "--manifest", "m", "--key", "k"],
    ],
)
def test_anything_else_starts_nothing(options: dict[str, OptionSpec], args: list[str]) -> None:
    assert recognise(args, options) is None


def test_an_early_verify_serves_only_the_same_arguments() -> None:
    early = EarlyVerify("w", "python3", True, ("m", "k"))

    assert early.serves("w", "python3", True)
    assert not early.serves("w", None, True)
    assert not early.serves("w", "python3", False)
    assert not early.serves("v", "python3", True)
