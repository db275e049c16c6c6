"""Builders for the service tests: signing keys, observations, envelopes (no Docker)."""

from __future__ import annotations

import json
from typing import Any

from child_processes import dying_with_parent

from lockd.model.environment import Distribution, OsInfo, ProbeReport, PythonInfo
from lockd.model.host import HostEvidence, TargetInfo
from lockd.model.manifest import Manifest, Observation
from lockd.trust import dsse, keys
from lockd.trust.statement import PAYLOAD_TYPE, make_statement

SITE = "/opt/venv/lib/python3.11/site-packages"
UID = "705ab4f5-6393-11e8-b7cc-42010a800002"


def image(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def observation(image_id: str, *, distributions: int = 3, **probe_changes: Any) -> Observation:
    dists = [
        Distribution(
            name=f"pkg-{i}",
            version="1.0",
            installer="pip",
            location=SITE,
            record_sha256=f"{i:064x}",
            files=10,
        )
        for i in range(distributions)
    ]
    probe: dict[str, Any] = {
        "probe_version": 1,
        "python": PythonInfo(
            version="3.11.2",
            implementation="cpython",
            executable="/opt/venv/bin/python3",
            prefix="/opt/venv",
            base_prefix="/usr",
            path=["/usr/lib/python3.11", SITE],
            platform="linux",
        ),
        "distributions": dists,
        "os": OsInfo(id="debian", version_id="12", glibc="2.36", machine="x86_64"),
        "env": {"CUDA_HOME": "/usr/local/cuda"},
    }
    probe.update(probe_changes)
    return Observation(
        target=TargetInfo(kind="container", ref="app-1"),
        host=HostEvidence(
            image_id=image_id,
            repo_tags=["app:1"],
            container_id="c" * 64,
            changes_source="overlay",
            config_env={"CUDA_HOME": "/usr/local/cuda"},
        ),
        probe=ProbeReport(**probe),
    )


def manifest(obs: Observation) -> Manifest:
    return Manifest(lockd_version="0.1.0", recorded_at="2025-01-01T00:00:00+00:00", observation=obs)


def envelope(key: keys.PrivateKey, obs: Observation) -> dsse.Envelope:
    return dsse.sign(make_statement(manifest(obs)), PAYLOAD_TYPE, key)


def envelope_json(key: keys.PrivateKey, obs: Observation) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(envelope(key, obs).to_json())
    return doc


def observation_json(obs: Observation) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(obs.model_dump_json(exclude_none=True))
    return doc


# --- AdmissionReviews ------------------------------------------------------------------------


def pod_spec(containers: list[str], init: list[str], ephemeral: list[str]) -> dict[str, Any]:
    def listed(prefix: str, images: list[str]) -> list[dict[str, Any]]:
        return [{"name": f"{prefix}{i}", "image": im} for i, im in enumerate(images)]

    spec: dict[str, Any] = {"containers": listed("c", containers)}
    if init:
        spec["initContainers"] = listed("i", init)
    if ephemeral:
        spec["ephemeralContainers"] = listed("e", ephemeral)
    return spec


def review(
    kind: str,
    containers: list[str],
    *,
    init: list[str] | None = None,
    ephemeral: list[str] | None = None,
    namespace: str = "prod",
    **request: Any,
) -> dict[str, Any]:
    """An AdmissionReview as the API server sends it, for a ``kind`` with these images."""
    spec = pod_spec(containers, init or [], ephemeral or [])
    meta = {"name": "web", "namespace": namespace}
    template = {"metadata": {"labels": {"app": "web"}}, "spec": spec}
    obj: dict[str, Any]
    if kind == "Pod":
        obj = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
    elif kind == "CronJob":
        obj = {
            "apiVersion": "batch/v1",
            "kind": kind,
            "metadata": meta,
            "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template}}},
        }
    else:
        group = "batch/v1" if kind == "Job" else "apps/v1"
        obj = {
            "apiVersion": group,
            "kind": kind,
            "metadata": meta,
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": template,
            },
        }
    group = {"Pod": "", "Job": "batch", "CronJob": "batch"}.get(kind, "apps")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
            "requestKind": {"group": group, "version": "v1", "kind": kind},
            "name": "web",
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:ci:deployer", "groups": ["ci"]},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            **request,
        },
    }


# --- a real `lockd serve` process ---------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """``lockd serve`` in a child process on loopback; ``start()`` waits for /readyz."""

    def __init__(
        self,
        env: dict[str, str],
        port: int | None = None,
        log: Any = None,
        workers: int = 1,
        args: tuple[str, ...] = (),
        ca: Any = None,
    ) -> None:
        """``args``: more options of `lockd serve`; ``ca``: the CA file of its TLS certificate
        (the URL is then https://localhost)."""
        self.env = env
        self.workers = workers
        self.port = port or free_port()
        self.url = f"{'https://localhost' if ca else 'http://127.0.0.1'}:{self.port}"
        self.log = log
        self.args = args
        self.context: Any = None
        if ca is not None:
            import ssl

            self.context = ssl.create_default_context(cafile=str(ca))
        self.process: Any = None

    def start(self, timeout: float = 60.0) -> Server:
        import os
        import subprocess
        import sys
        import time
        import urllib.request

        self.process = subprocess.Popen(
            dying_with_parent(
                [
                    sys.executable,
                    "-m",
                    "lockd",
                    "serve",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                    *self.args,
                ]
            ),
            env={**os.environ, **self.env},
            stdout=self.log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"lockd serve exited {self.process.returncode}")
            try:
                ready_url = self.url + "/readyz"
                with urllib.request.urlopen(ready_url, timeout=2, context=self.context) as answer:
                    ready = answer.status == 200
                if ready:
                    time.sleep(0.2)  # a server of another process on this port: ours exits
                    if self.process.poll() is not None:
                        raise RuntimeError(f"lockd serve exited {self.process.returncode}")
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"lockd serve did not become ready on {self.url} in {timeout} s")

    def kill(self) -> None:
        import signal

        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        import subprocess

        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
