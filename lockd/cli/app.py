"""The command tree: every command of lockd, by group, on one Typer application."""

from __future__ import annotations

from collections.abc import Callable

import typer

from lockd.cli import environments, images, manifests, service, watching

app = typer.Typer(
    help="Record Python/CUDA environments into signed manifests and verify targets against them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # docstrings are wrapped at 100 columns: markdown reflows them to the terminal's width
    rich_markup_mode="markdown",
)
token_app = typer.Typer(help="API tokens of the lockd service.", no_args_is_help=True)
audit_app = typer.Typer(help="The lockd service's audit log.", no_args_is_help=True)

commands: tuple[Callable[..., None], ...] = (
    environments.keygen,
    environments.record,
    environments.verify,
    environments.observe,
    manifests.show,
    manifests.diff,
    manifests.compat,
    manifests.lock,
    manifests.sbom,
    manifests.schema,
    service.serve,
)
for command in commands:
    app.command()(command)
app.add_typer(token_app, name="token")
token_app.command("create")(service.token_create)
app.command()(service.push)
app.add_typer(audit_app, name="audit")
audit_app.command("verify")(service.audit_verify)
audit_app.command("export")(service.audit_export)
for command in (service.status, images.attach, images.fetch, images.gate, watching.watch):
    app.command()(command)
