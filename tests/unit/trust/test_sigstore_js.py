"""An independent verifier of lockd's Sigstore bundles: sigstore-js (@sigstore/verify, from the
npm registry, at the versions of tests/assets/sigstore/package.json) verifies what
``lockd record --bundle`` writes with the signer's public key (no log, no timestamp: thresholds
0), and refuses a tampered one, as lockd does. Marked ``network``: npm installs sigstore-js
into $LOCKD_SIGSTORE_JS when scripts/setup has not."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "sigstore"
Lockd = Callable[..., subprocess.CompletedProcess[str]]


def _folder() -> Path:
    wheels = Path(os.environ.get("LOCKD_WHEELS", "/var/cache/lockd/wheels"))
    return Path(os.environ.get("LOCKD_SIGSTORE_JS") or wheels.parent / "sigstore-js")


@pytest.fixture
def sigstore_js(network_access: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The node_modules folder holding sigstore-js, installed by npm when it is not there."""
    package = (ASSETS / "package.json").read_bytes()
    folder = _folder()
    installed = folder / "package.json"
    ready = (folder / "node_modules" / "@sigstore" / "verify").is_dir()
    if ready and installed.is_file() and installed.read_bytes() == package:
        return folder / "node_modules"
    if not os.access(folder if folder.exists() else folder.parent, os.W_OK):
        folder = tmp_path_factory.mktemp("sigstore-js")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "package.json").write_bytes(package)
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed: apt-get install npm (or run scripts/setup)")
    done = subprocess.run(
        [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--no-package-lock"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"npm could not install sigstore-js into {folder}: {done.stderr[-2000:]}")
    return folder / "node_modules"


def _node(modules: Path, bundle: Path, key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(ASSETS / "verify_bundle.js"), str(bundle), str(key)],
        env={**os.environ, "NODE_PATH": str(modules)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sigstore_js_verifies_lockds_bundle_and_refuses_a_tampered_one(
    sigstore_js: Path, keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd
) -> None:
    bundle = tmp_path / "local.sigstore.json"
    recorded = lockd("record", "local", "--key", keypair[0], "--bundle", "-o", bundle)
    assert recorded.returncode == 0, recorded.stderr

    verified = _node(sigstore_js, bundle, keypair[1])
    assert (verified.returncode, verified.stdout) == (0, "verified\n"), verified.stderr

    doc = json.loads(bundle.read_text())
    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    statement["predicate"]["lockd_version"] = "9.9.9"
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    tampered = tmp_path / "tampered.sigstore.json"
    tampered.write_text(json.dumps(doc))

    refused = _node(sigstore_js, tampered, keypair[1])
    assert (refused.returncode, refused.stdout) == (
        1,
        "VerificationError: SIGNATURE_ERROR signature verification failed\n",
    )
    ours = lockd("verify", "local", "--manifest", tampered, "--key", keypair[1], "--json")
    assert ours.returncode == 1
    [signature] = [c for c in json.loads(ours.stdout)["checks"] if c["id"] == "signature"]
    assert signature["status"] == "fail"
    assert signature["message"].startswith(
        "envelope signature does not verify against any trusted key (tried keyids "
    )


def test_sigstore_js_refuses_the_bundle_under_another_key(
    sigstore_js: Path, keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd
) -> None:
    bundle = tmp_path / "local.sigstore.json"
    assert lockd("record", "local", "--key", keypair[0], "--bundle", "-o", bundle).returncode == 0
    other = tmp_path / "other"
    assert lockd("keygen", "--output-key-prefix", other).returncode == 0
    refused = _node(sigstore_js, bundle, other.with_suffix(".pub"))
    assert (refused.returncode, refused.stdout) == (
        1,
        "VerificationError: SIGNATURE_ERROR signature verification failed\n",
    )
