"""Attestations in a real OCI registry: Debian's docker-registry (distribution 2.8, which has no
referrers API, so the tag scheme is what carries the envelopes), started on loopback here; a
real image pushed by the Docker daemon; attach, fetch, verify, the gate, concurrent attaches,
and registries that are down, answer 404 or answer garbage."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lockd import dsse, keys
from lockd.gate import gate, judge
from lockd.model import (
    HostEvidence,
    Manifest,
    Observation,
    OsInfo,
    ProbeReport,
    PythonInfo,
    TargetInfo,
)
from lockd.policy import default_policy
from lockd.registry import (
    DSSE_MEDIA_TYPE,
    Registry,
    RegistryError,
    attach,
    fetch,
)
from lockd.statement import PAYLOAD_TYPE, make_statement

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def registry_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry on a free loopback port, storage in a temporary folder."""
    if shutil.which("docker-registry") is None:
        installed = subprocess.run(
            [str(REPO / "scripts" / "registry"), "install"],
            capture_output=True,
            text=True,
            check=False,
        )
        if installed.returncode != 0 or shutil.which("docker-registry") is None:
            pytest.fail(f"no docker-registry: scripts/registry install: {installed.stderr[-300:]}")
    folder = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {folder / 'storage'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    with (folder / "registry.log").open("wb") as log:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    host = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}/v2/", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"docker-registry did not start: {(folder / 'registry.log').read_text()}"
                    )
                time.sleep(0.1)
        yield host
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="session")
def pushed_image(
    docker_client: Any, registry_host: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A small image built from scratch and pushed by the daemon: HOST/lockd-test/tiny@sha256:…"""
    context = tmp_path_factory.mktemp("tiny")
    (context / "hello.txt").write_text("lockd registry test\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    repo = f"{registry_host}/lockd-test/tiny"
    image, _ = docker_client.images.build(path=str(context), tag=f"{repo}:1", rm=True)
    for line in docker_client.images.push(repo, tag="1", stream=True, decode=True):
        assert "error" not in line, line
    image.reload()
    [digest] = [d for d in image.attrs["RepoDigests"] if d.startswith(repo + "@")]
    return str(digest)


def signed(key: keys.PrivateKey, image: str, note: str = "") -> bytes:
    """A lockd manifest for the pushed image (its repo digest as a subject), signed."""
    repo = image.partition("@")[0]
    observation = Observation(
        target=TargetInfo(kind="image", ref=image),
        host=HostEvidence(
            image_id="sha256:" + "1" * 64, repo_tags=[f"{repo}:1"], repo_digests=[image]
        ),
        probe=ProbeReport(
            probe_version=1,
            python=PythonInfo(
                version="3.11.2",
                implementation="cpython",
                executable="/usr/bin/python3",
                prefix="/usr",
                base_prefix="/usr",
                path=[],
                platform="linux",
            ),
            distributions=[],
            os=OsInfo(id="debian", version_id="12", glibc="2.36", machine="x86_64"),
            env={"NOTE": note} if note else {},
        ),
    )
    manifest = Manifest(
        lockd_version="0.1.0", recorded_at="2026-01-01T00:00:00+00:00", observation=observation
    )
    return dsse.sign(make_statement(manifest), PAYLOAD_TYPE, key).to_json()


@pytest.fixture(scope="module")
def key() -> keys.PrivateKey:
    return keys.generate_private_key()


def test_attach_fetch_verify_round_trip_over_the_tag_scheme(
    pushed_image: str, registry_host: str, key: keys.PrivateKey
) -> None:
    envelope = signed(key, pushed_image)
    summary = attach(pushed_image, envelope)
    repo, _, digest = pushed_image.partition("@")
    repository = repo.split("/", 1)[1]
    stem = digest.replace(":", "-")
    assert summary["tags"][1] == f"{stem}.att"

    registry = Registry(registry_host)
    assert registry.referrers(repository, digest) is None  # distribution 2.8: no referrers API
    att = registry.manifest(repository, f"{stem}.att")
    assert att is not None
    layers = json.loads(att[0])["layers"]
    assert [layer["mediaType"] for layer in layers] == [DSSE_MEDIA_TYPE]
    referrer = registry.manifest(repository, summary["referrer"])
    assert referrer is not None
    document = json.loads(referrer[0])
    assert document["subject"]["digest"] == digest
    assert document["artifactType"] == "application/vnd.lockd.manifest.v1+dsse"

    [fetched] = fetch(pushed_image)
    assert fetched == envelope
    again = attach(pushed_image, envelope)  # idempotent: the same envelope is stored once
    assert again["envelope"] == summary["envelope"]
    assert fetch(pushed_image) == [envelope]

    where = "registry"
    result = judge(
        pushed_image,
        [(where, dsse.parse_envelope(fetched, where))],
        [key.public_key()],
        default_policy(),
        "default",
        where,
    )
    assert result.allowed, result.reasons


def test_eight_concurrent_attaches_lose_nothing(
    pushed_image: str, registry_host: str, key: keys.PrivateKey
) -> None:
    image = pushed_image
    envelopes = [signed(key, image, note=f"run-{i}") for i in range(8)]
    before = set(fetch(image))
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda e: attach(image, e), envelopes))
    after = fetch(image)
    assert set(envelopes) <= set(after)
    assert len(after) == len(before | set(envelopes))
    repo, _, digest = image.partition("@")
    att = Registry(registry_host).manifest(repo.split("/", 1)[1], digest.replace(":", "-") + ".att")
    assert att is not None
    att_layers = {layer["digest"] for layer in json.loads(att[0])["layers"]}
    assert len(att_layers) == len(after)  # cosign's tag holds every one as well


def lockd(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lockd", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=120,
        check=False,
    )


def test_cli_attach_fetch_and_gate_from_the_registry(pushed_image: str, tmp_path: Path) -> None:
    own = keys.generate_private_key()
    pub = tmp_path / "own.pub"
    pub.write_bytes(keys.public_pem(own))
    stranger = tmp_path / "stranger.pub"
    stranger.write_bytes(keys.public_pem(keys.generate_private_key()))
    envelope = tmp_path / "m.dsse.json"
    envelope.write_bytes(signed(own, pushed_image, note="cli"))

    attached = lockd("attach", pushed_image, envelope)
    assert attached.returncode == 0, attached.stderr
    assert "attached to" in attached.stdout

    out = tmp_path / "fetched"
    fetched = lockd("fetch", pushed_image, "--output", out)
    assert fetched.returncode == 0, fetched.stderr
    files = sorted(out.glob("*.dsse.json"))
    assert envelope.read_bytes() in [f.read_bytes() for f in files]

    passed = lockd("gate", pushed_image, "--registry", "--key", pub, "--json")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert json.loads(passed.stdout)["source"] == "the registry"
    untrusted = lockd("gate", pushed_image, "--registry", "--key", stranger)
    assert untrusted.returncode == 1

    repo = pushed_image.partition("@")[0]
    missing = f"{repo}@sha256:{'0' * 64}"
    nothing = lockd("fetch", missing, "--output", tmp_path / "none")
    assert nothing.returncode == 1
    refused = lockd("attach", missing, envelope)
    assert refused.returncode == 3
    assert "no such image manifest; push the image first" in refused.stderr
    no_registry = lockd("attach", "app@sha256:" + "0" * 64, envelope)
    assert no_registry.returncode == 2
    assert "the registry host is required" in no_registry.stderr


class _Garbage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>not a registry</html>"
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def garbage_registry() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_registries_that_are_down_or_answer_garbage(garbage_registry: str) -> None:
    digest = "sha256:" + "0" * 64
    with pytest.raises(RegistryError, match="cannot reach the registry"):
        fetch(f"127.0.0.1:{_free_port()}/app@{digest}")
    with pytest.raises(RegistryError, match="not JSON"):
        fetch(f"{garbage_registry}/app@{digest}")
    with pytest.raises(RegistryError, match="does not hash to the digest"):
        attach(f"{garbage_registry}/app@{digest}", b"{}")
    with pytest.raises(RegistryError, match="not JSON"):
        gate(
            f"{garbage_registry}/app@{digest}",
            [keys.generate_private_key().public_key()],
            default_policy(),
            "default",
        )


def test_admission_takes_manifests_from_the_registry_when_the_store_has_none(
    pushed_image: str, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from lockd.server.app import create_app
    from lockd.server.settings import Settings
    from lockd.store.engine import make_engine
    from lockd.store.migrate import upgrade

    trusted = keys.generate_private_key()
    public = tmp_path / "trusted.pub"
    public.write_bytes(keys.public_pem(trusted))
    attach(pushed_image, signed(trusted, pushed_image, note="admission"))
    database = tmp_path / "lockd.db"
    engine = make_engine(f"sqlite:///{database}")
    upgrade(engine)
    engine.dispose()

    def decide(fallback: bool) -> dict[str, Any]:
        config = tmp_path / f"admission-{fallback}.yaml"
        config.write_text(f"registry_fallback: {str(fallback).lower()}\n")
        settings = Settings(
            database_url=f"sqlite:///{database}",
            trusted_keys=(public,),
            policies=REPO / "policies",
            admission_config=config,
        )
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "prod",
                "operation": "CREATE",
                "object": {"spec": {"containers": [{"name": "app", "image": pushed_image}]}},
            },
        }
        with TestClient(create_app(settings)) as client:
            answer = client.post("/v1/admission", json=review)
        assert answer.status_code == 200, answer.text
        response: dict[str, Any] = answer.json()["response"]
        return response

    assert decide(fallback=True)["allowed"] is True
    without = decide(fallback=False)
    assert without["allowed"] is False
    assert "no signed lockd manifest is stored" in without["status"]["message"]
