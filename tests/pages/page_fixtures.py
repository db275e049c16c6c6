"""A real ``lockd serve`` (SQLite, anonymous reads) holding the two reference manifests and
reports made against them, and headless Chromium (Debian's ``chromium``) to load its pages.

Screenshots go to ``$LOCKD_SCREENSHOTS`` or tests/pages/screenshots/ (git-ignored)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from child_processes import lockd_serve
from reference_manifests import manifest_a, manifest_b

from lockd.client import Client
from lockd.model.report import Check, Report, ReportManifest
from lockd.trust import dsse, keys
from lockd.trust.statement import PAYLOAD_TYPE, make_statement

SCREENSHOTS = Path(os.environ.get("LOCKD_SCREENSHOTS") or Path(__file__).parent / "screenshots")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


@dataclass(frozen=True)
class Service:
    url: str
    digest_a: str
    digest_b: str
    keyid: str
    env: dict[str, str]


def _lockd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lockd", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _report(image: str, digest: str, verified: bool) -> Report:
    status = "pass" if verified else "fail"
    return Report(
        verified=verified,
        target={"kind": "container", "ref": "train-1", "image_id": image},
        manifest=ReportManifest(path=f"/v1/manifests/{digest}"),
        checks=[
            Check(id="signature", status="pass", evidence="signature", message="signed"),
            Check(id="packages", status=status, evidence="inside", message="as recorded"),
        ],
    )


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("pages-service")
    key = keys.generate_private_key()
    public = folder / "signer.pub"
    public.write_bytes(keys.public_pem(key))
    env = {
        "LOCKD_DATABASE_URL": f"sqlite:///{folder / 'lockd.db'}",
        "LOCKD_TRUSTED_KEYS": str(public),
        "LOCKD_ALLOW_ANONYMOUS_READ": "1",
    }
    with lockd_serve(env, folder / "serve.log") as url:
        made = _lockd("token", "create", "ci", "--role", "recorder", env=env)
        assert made.returncode == 0, made.stderr
        client = Client(url, made.stdout.strip())
        digests = []
        for manifest, labels in (
            (manifest_a(), ["experiment=baseline", "doi=10.5281/zenodo.1"]),
            (manifest_b(), ["experiment=upgrade"]),
        ):
            envelope = dsse.sign(make_statement(manifest), PAYLOAD_TYPE, key)
            summary, created = client.push(envelope.to_json(), name="train", labels=labels)
            assert created
            digests.append(summary["digest"])
            payload = envelope.payload_bytes()
            assert summary["digest"] == "sha256:" + hashlib.sha256(payload).hexdigest()
        a, b = digests
        image_a = manifest_a().observation.host
        image_b = manifest_b().observation.host
        assert image_a is not None and image_b is not None
        client.push_report(_report(image_a.image_id, a, True))
        client.push_report(_report(image_a.image_id, a, False))
        client.push_report(_report(image_b.image_id, b, True))
        yield Service(url, a, b, keys.keyid(key), env)


@dataclass(frozen=True)
class Browser:
    binary: str
    profile: Path

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def dom(self, url: str) -> str:
        """The page's DOM after loading, as Chromium serializes it."""
        result = self._run("--dump-dom", url)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    def screenshot(self, url: str, name: str, height: int = 2400) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        path.unlink(missing_ok=True)
        result = self._run(f"--screenshot={path}", f"--window-size=1400,{height}", url)
        assert result.returncode == 0, result.stderr[-2000:]
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
        return path


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Browser:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("no chromium on PATH: scripts/setup installs Debian's chromium")
    return Browser(binary, tmp_path_factory.mktemp("chromium-profile"))
