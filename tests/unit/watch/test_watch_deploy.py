"""The shipped watch deployments parse as `lockd watch` options and check signatures on the node."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import typer
import yaml

from lockd.cli.app import app

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def watch_params(argv: list[str]) -> dict[str, Any]:
    assert argv[:2] == ["/opt/lockd/bin/lockd", "watch"]
    group = typer.main.get_command(app)
    watch = group.commands["watch"]  # type: ignore[attr-defined]
    return dict(watch.make_context("watch", argv[2:]).params)


def test_the_daemonset_checks_every_manifest_against_mounted_keys() -> None:
    """Without --key the agent takes the service's word for signatures: the DaemonSet gives
    one, from the configMap its header says to create."""
    daemonset = yaml.safe_load((DEPLOY / "kubernetes" / "watch-daemonset.yaml").read_text())
    pod = daemonset["spec"]["template"]["spec"]
    [container] = pod["containers"]
    params = watch_params(container["command"])
    keys = [str(k) for k in params["key"]]
    assert keys == ["/etc/lockd/signers/signer.pub"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["signers"]["mountPath"] == "/etc/lockd/signers"
    assert mounts["signers"]["readOnly"] is True
    [volume] = [v for v in pod["volumes"] if v["name"] == "signers"]
    assert volume["configMap"]["name"] == "lockd-signers"
    header = (DEPLOY / "kubernetes" / "watch-daemonset.yaml").read_text()
    assert "create configmap lockd-signers --from-file=signer.pub" in header


def test_the_systemd_unit_checks_every_manifest_against_a_key() -> None:
    unit = (DEPLOY / "systemd" / "lockd-watch.service").read_text()
    start = unit.split("ExecStart=", 1)[1].split("\nRestart=", 1)[0].replace("\\\n", " ")
    argv = shlex.split(start.replace("${LOCKD_SERVER}", "https://lockd.example:8443"))
    params = watch_params(argv)
    assert [str(k) for k in params["key"]] == ["/etc/lockd/signers/signer.pub"]
    assert "install -D -m 0644 signer.pub /etc/lockd/signers/signer.pub" in unit
