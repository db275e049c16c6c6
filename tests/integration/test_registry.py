"""Attestations in a real OCI registry: Debian's docker-registry (distribution 2.8, which has no
referrers API, so the tag scheme is what carries the envelopes), started on loopback here; a
real image pushed by the Docker daemon; attach, fetch, verify, the gate, concurrent attaches,
and registries that are down, answer 404 or answer garbage."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import shutil
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import child_processes
import pytest

from lockd.gate import gate, judge
from lockd.judgement.policy import default_policy
from lockd.model.environment import OsInfo, ProbeReport, PythonInfo
from lockd.model.host import HostEvidence, TargetInfo
from lockd.model.manifest import Manifest, Observation
from lockd.trust import dsse, keys
from lockd.trust.registry import DSSE_MEDIA_TYPE, Registry, RegistryError, attach, fetch
from lockd.trust.statement import PAYLOAD_TYPE, make_statement

REPO = Path(__file__).resolve().parents[2]
Lockd = Callable[..., subprocess.CompletedProcess[str]]  # the `lockd` fixture (tests/conftest.py)


@contextlib.contextmanager
def serve_registry(folder: Path, *, delete: bool = False) -> Iterator[str]:
    """Debian's docker-registry on a free loopback port, storage in ``folder``; ``delete``:
    manifests may be deleted. Yields HOST:PORT; stopped on exit."""
    if shutil.which("docker-registry") is None:
        installed = subprocess.run(
            [str(REPO / "scripts" / "registry"), "install"],
            capture_output=True,
            text=True,
            check=False,
        )
        if installed.returncode != 0 or shutil.which("docker-registry") is None:
            pytest.fail(f"no docker-registry: scripts/registry install: {installed.stderr[-300:]}")
    port = child_processes.free_port()
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {folder / 'storage'}}}"
        + (", delete: {enabled: true}" if delete else "")
        + "}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    with (folder / "registry.log").open("wb") as log:
        process = subprocess.Popen(
            child_processes.dying_with_parent(["docker-registry", "serve", str(config)]),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    host = f"127.0.0.1:{port}"
    try:
        child_processes.wait_ready(
            "docker-registry", f"http://{host}/v2/", process, folder / "registry.log", timeout=30
        )
        yield host
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="session")
def registry_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The registry of this session's tests (see serve_registry)."""
    with serve_registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


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


def test_cli_attach_fetch_and_gate_from_the_registry(
    pushed_image: str, tmp_path: Path, lockd: Lockd
) -> None:
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
        fetch(f"127.0.0.1:{child_processes.free_port()}/app@{digest}")
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
        host = pushed_image.split("/", 1)[0]
        config.write_text(f"registry_fallback: [{host if fallback else ''}]\n")
        settings = Settings(
            database_url=f"sqlite:///{database}",
            trusted_keys=(public,),
            policies=(REPO / "lockd" / "policies",),
            admission_config=config,
            listen_host="127.0.0.1",  # anonymous reviews are answered on loopback only
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


# --- lockd verify --registry: the manifest from the image's registry ----------------------------


@pytest.fixture
def push(
    docker_client: Any, tmp_path: Path
) -> Iterator[Callable[[str, str, str], tuple[str, str]]]:
    """``push(host, base, name)``: an image FROM ``base`` with a file of its own (so a digest
    of its own, with no attestation yet), pushed by the daemon to HOST/lockd-test/NAME;
    ``(tag, HOST/lockd-test/NAME@sha256:…)``. Its tags are removed at teardown."""
    made: list[str] = []

    def _push(host: str, base: str, name: str) -> tuple[str, str]:
        unique = uuid.uuid4().hex[:12]
        context = tmp_path / f"image-{unique}"
        context.mkdir()
        (context / "unique.txt").write_text(unique)
        (context / "Dockerfile").write_text(f"FROM {base}\nCOPY unique.txt /unique.txt\n")
        repo = f"{host}/lockd-test/{name}"
        image, _ = docker_client.images.build(
            path=str(context),
            tag=f"{repo}:{unique}",
            rm=True,
            pull=False,
            network_mode="none",
            labels={"lockd.test": "1"},
        )
        made.append(f"{repo}:{unique}")
        for line in docker_client.images.push(repo, tag=unique, stream=True, decode=True):
            assert "error" not in line, line
        image.reload()
        [digest] = [d for d in image.attrs["RepoDigests"] if d.startswith(repo + "@")]
        return f"{repo}:{unique}", str(digest)

    yield _push
    from docker.errors import DockerException

    for tag in made:
        with contextlib.suppress(DockerException):
            docker_client.images.remove(tag, force=True)


def _attestation(image: str, envelope: bytes) -> str:
    """How verify names an envelope it took from the registry."""
    return f"{image} (registry attestation sha256:{hashlib.sha256(envelope).hexdigest()[:12]}…)"


def _signature(report: dict[str, Any]) -> dict[str, Any]:
    [check] = [c for c in report["checks"] if c["id"] == "signature"]
    return check


def _keyid(public: Path) -> str:
    return keys.keyid(keys.load_public_key(public))


@pytest.fixture
def push_recorded(
    lockd: Lockd,
    keypair: tuple[Path, Path],
    push: Callable[[str, str, str], tuple[str, str]],
    registry_host: str,
    tmp_path: Path,
) -> Callable[[str, str], tuple[str, str, Path]]:
    """``push_recorded(base, name)``: ``push`` to the session's registry, then ``lockd record
    image:…`` of the pushed image: ``(tag, HOST/lockd-test/NAME@sha256:…, the manifest)``."""

    def _push_recorded(base: str, name: str) -> tuple[str, str, Path]:
        tag, image = push(registry_host, base, name)
        manifest = tmp_path / f"{name}.dsse.json"
        recorded = lockd("record", f"image:{image}", "--key", keypair[0], "-o", manifest)
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr
        return tag, image, manifest

    return _push_recorded


@dataclass(frozen=True)
class Attested:
    image: str  # HOST/lockd-test/app@sha256:…, a digest of its own
    manifest: Path  # recorded from the image, attached next to it in the registry
    container: Any  # a running container of the image


@pytest.fixture
def attested_app(
    lockd: Lockd,
    push_recorded: Callable[[str, str], tuple[str, str, Path]],
    app_image: str,
    run_container: Callable[..., Any],
) -> Attested:
    """The app image pushed to the session's registry, its manifest recorded and attached
    there, and a container of it running."""
    tag, image, manifest = push_recorded(app_image, "app")
    assert lockd("attach", image, manifest).returncode == 0
    return Attested(image, manifest, run_container(tag))


def test_verify_a_running_container_against_its_registry_attestation_then_drift(
    lockd: Lockd, keypair: tuple[Path, Path], attested_app: Attested, tmp_path: Path
) -> None:
    image, manifest, container = attested_app.image, attested_app.manifest, attested_app.container
    stranger = tmp_path / "stranger.dsse.json"  # newer, but signed by a key nobody trusts
    stranger.write_bytes(signed(keys.generate_private_key(), image, note="stranger"))
    assert lockd("attach", image, stranger).returncode == 0

    passed = lockd("verify", container.name, "--key", keypair[1], "--registry", "--json")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    report = json.loads(passed.stdout)
    assert report["verified"] is True
    assert report["manifest"]["path"] == _attestation(image, manifest.read_bytes())
    assert _signature(report)["message"] == (
        f"signed by keyid {_keyid(keypair[1])[:16]}; the newest of 1 trusted attestation(s) "
        "in the registry"
    )
    human = lockd("verify", container.name, "--key", keypair[1], "--registry")
    assert human.returncode == 0, human.stdout + human.stderr

    code, output = container.exec_run(
        ["pip", "install", "-q", "--no-index", "--find-links", "/wheels", "tomli==2.0.1"]
    )
    assert code == 0, output.decode()
    drifted = lockd("verify", container.name, "--key", keypair[1], "--registry", "--json")
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    report = json.loads(drifted.stdout)
    assert {c["id"] for c in report["checks"] if c["status"] == "fail"} == {
        "packages",
        "filesystem",
    }

    # A newer trusted attestation (of the drifted container) is the one verify takes.
    newer = tmp_path / "drifted.dsse.json"
    again = lockd("record", container.name, "--key", keypair[0], "-o", newer)
    assert again.returncode == 0, again.stdout + again.stderr
    before = json.loads(dsse.parse_envelope(manifest.read_bytes(), "m").payload_bytes())
    after = json.loads(dsse.parse_envelope(newer.read_bytes(), "m").payload_bytes())
    assert after["predicate"]["recorded_at"] > before["predicate"]["recorded_at"]  # precondition
    assert lockd("attach", image, newer).returncode == 0
    latest = lockd("verify", container.name, "--key", keypair[1], "--registry", "--json")
    assert latest.returncode == 0, latest.stdout + latest.stderr
    report = json.loads(latest.stdout)
    assert report["manifest"]["path"] == _attestation(image, newer.read_bytes())
    assert _signature(report)["message"].endswith(
        "the newest of 2 trusted attestation(s) in the registry"
    )


def test_verify_finds_an_attestation_only_in_cosigns_att_tag(
    lockd: Lockd,
    keypair: tuple[Path, Path],
    push_recorded: Callable[[str, str], tuple[str, str, Path]],
    registry_host: str,
    pushed_image: str,
) -> None:
    """The tag fallback as cosign writes it: one manifest under sha256-<hex>.att whose layers are
    DSSE envelopes, no referrer and no tag of lockd's own."""
    _, image, manifest = push_recorded(pushed_image, "tiny")
    envelope = manifest.read_bytes()
    registry = Registry(registry_host)
    repository, digest = "lockd-test/tiny", image.rpartition("@")[2]
    layer = registry.push_blob(repository, envelope)
    config = registry.push_blob(repository, b"{}")
    att = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": DSSE_MEDIA_TYPE, "digest": layer, "size": len(envelope)}],
    }
    registry.put_manifest(
        repository,
        digest.replace(":", "-") + ".att",
        json.dumps(att).encode(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    assert registry.referrers(repository, digest) is None  # distribution 2.8: tags only

    verified = lockd("verify", f"image:{image}", "--key", keypair[1], "--registry", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["manifest"]["path"] == _attestation(image, envelope)


def test_verify_with_a_service_first_and_the_registry_when_it_holds_none(
    lockd: Lockd, keypair: tuple[Path, Path], attested_app: Attested, tmp_path: Path
) -> None:
    image, manifest, container = attested_app.image, attested_app.manifest, attested_app.container

    with lockd_service(lockd, tmp_path, keypair[1]) as (url, token):
        env = {"LOCKD_TOKEN": token}
        args = ("verify", container.name, "--key", keypair[1], "--server", url, "--json")
        from_registry = lockd(*args, "--registry", env=env)
        assert from_registry.returncode == 0, from_registry.stdout + from_registry.stderr
        path = json.loads(from_registry.stdout)["manifest"]["path"]
        assert path == _attestation(image, manifest.read_bytes())
        stored = _get(f"{url}/v1/verifications?subject={container.image.id}", token)
        assert [v["report"]["manifest"]["path"] for v in stored] == [path]  # pushed there

        without = lockd(*args, env=env)  # no --registry: the service's answer is final
        assert without.returncode == 2
        assert "no manifest for" in without.stderr

        assert lockd("push", manifest, "--server", url, env=env).returncode == 0
        from_service = lockd(*args, "--registry", env=env)
        assert from_service.returncode == 0, from_service.stdout + from_service.stderr
        path = json.loads(from_service.stdout)["manifest"]["path"]
        assert path.startswith(f"{url}/v1/manifests/sha256:")


def _get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@contextlib.contextmanager
def lockd_service(lockd: Lockd, folder: Path, trusted: Path) -> Iterator[tuple[str, str]]:
    """``lockd serve`` on SQLite in ``folder``, trusting ``trusted``: (URL, a recorder token)."""
    env = {
        "LOCKD_DATABASE_URL": f"sqlite:///{folder / 'lockd.db'}",
        "LOCKD_TRUSTED_KEYS": str(trusted),
    }
    with child_processes.lockd_serve(env, folder / "service.log") as url:
        made = lockd("token", "create", "ci", "--role", "recorder", env=env)
        assert made.returncode == 0, made.stderr
        yield url, made.stdout.strip()


def test_verify_registry_errors_name_the_image_and_exit_1_or_3(
    lockd: Lockd,
    keypair: tuple[Path, Path],
    push: Callable[[str, str, str], tuple[str, str]],
    pushed_image: str,
    tmp_path: Path,
) -> None:
    """No attestation and none trusted: not verified (1), saying why; an image the registry
    does not have (404) and a registry that is down: errors (3)."""
    wide = {"COLUMNS": "1000"}

    def verify(image: str) -> subprocess.CompletedProcess[str]:
        return lockd(
            "verify", f"image:{image}", "--key", keypair[1], "--registry", "--json", env=wide
        )

    folder = tmp_path / "registry"
    folder.mkdir()
    with serve_registry(folder, delete=True) as host:
        _, image = push(host, pushed_image, "tiny")
        _, deleted = push(host, pushed_image, "gone")

        none = verify(image)
        assert none.returncode == 1, none.stdout + none.stderr
        report = json.loads(none.stdout)
        assert report["verified"] is False
        assert report["manifest"]["path"] == image
        assert _signature(report) == {
            "id": "signature",
            "status": "fail",
            "evidence": "signature",
            "message": f"no lockd attestation is stored next to {image}; record the image and "
            "attach the manifest there (lockd attach IMAGE@DIGEST ENVELOPE)",
            "findings": [],
        }
        assert {c["status"] for c in report["checks"][1:]} == {"skip"}

        untrusted = signed(keys.generate_private_key(), image, note="untrusted")
        attach(image, untrusted)
        refused = verify(image)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert _signature(json.loads(refused.stdout))["message"] == (
            f"none of the 1 attestation(s) next to {image} is signed by a trusted key and names "
            f"the image: {_attestation(image, untrusted)}: not signed by a trusted key"
        )

        repository, digest = "lockd-test/gone", deleted.rpartition("@")[2]
        Registry(host).request("DELETE", f"/v2/{repository}/manifests/{digest}", ok=(202,))
        missing = verify(deleted)
        assert missing.returncode == 3, missing.stdout + missing.stderr
        assert " ".join(missing.stderr.split()) == (
            f"lockd: error: {deleted}: the registry has no such image (404); the target's image "
            "was not pushed there, or was deleted"
        )
    down = verify(image)  # the registry has stopped
    assert down.returncode == 3, down.stdout + down.stderr
    referrers = (
        f"http://{host}/v2/lockd-test/tiny/referrers/{image.rpartition('@')[2]}"
        "?artifactType=application/vnd.lockd.manifest.v1%2Bdsse"
    )
    assert " ".join(down.stderr.split()) == (
        f"lockd: error: GET {referrers}: cannot reach the registry ([Errno 111] Connection "
        "refused); check the image's registry"
    )


def test_verify_attested_against_a_registry_that_answers_garbage(garbage_registry: str) -> None:
    from lockd.attestations import verify_attested

    image = f"{garbage_registry}/app@sha256:{'0' * 64}"
    observation = Observation(
        target=TargetInfo(kind="container", ref="web"),
        host=HostEvidence(image_id="sha256:" + "1" * 64, repo_digests=[image]),
    )
    with pytest.raises(RegistryError) as caught:
        verify_attested(observation, [keys.generate_private_key().public_key()], default_policy())
    assert caught.value.exit_code == 3
    assert str(caught.value).endswith(": the registry answered something that is not JSON")


def test_cli_attach_bundle_stores_a_sigstore_referrer_beside_the_envelope(
    pushed_image: str, registry_host: str, tmp_path: Path, lockd: Lockd
) -> None:
    from lockd.trust.sigstore_bundle import BUNDLE_MEDIA_TYPE, key_bundle

    own = keys.generate_private_key()
    pub = tmp_path / "own.pub"
    pub.write_bytes(keys.public_pem(own))
    envelope = dsse.parse_envelope(signed(own, pushed_image, note="bundle"), "m")
    bundle = tmp_path / "m.sigstore.json"
    bundle.write_bytes(key_bundle(envelope, keys.keyid(own)))

    attached = lockd("attach", pushed_image, bundle, "--bundle")
    assert attached.returncode == 0, attached.stderr
    assert "attached as a Sigstore bundle sha256:" in attached.stdout

    repository, _, digest = pushed_image.partition("/")[2].partition("@")
    tag = f"{digest.replace(':', '-')}.lockd-{hashlib.sha256(bundle.read_bytes()).hexdigest()[:16]}"
    stored = Registry(registry_host).manifest(repository, tag)
    assert stored is not None
    referrer = json.loads(stored[0])
    assert referrer["artifactType"] == BUNDLE_MEDIA_TYPE
    assert [layer["mediaType"] for layer in referrer["layers"]] == [BUNDLE_MEDIA_TYPE]
    assert referrer["subject"]["digest"] == digest

    out = tmp_path / "fetched"
    assert lockd("fetch", pushed_image, "--output", out).returncode == 0
    bundles = [f.read_bytes() for f in out.glob("*.sigstore.json")]
    assert bundle.read_bytes() in bundles  # the bundle as written, beside the envelope
    assert envelope.to_json() in [f.read_bytes() for f in out.glob("*.dsse.json")]

    passed = lockd("gate", pushed_image, "--registry", "--key", pub, "--json")
    assert passed.returncode == 0, passed.stdout + passed.stderr
