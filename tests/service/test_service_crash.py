"""Crash safety on both databases: 8 writers for 30 s (LOCKD_CRASH_TEST_SECONDS), the server
SIGKILLed in the middle and restarted: every request that got a 2xx is stored, every stored
write has its audit entry, and the chain verifies."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from service_fixtures import Signer
from service_helpers import Server, envelope, image, observation, observation_json

from lockd.store.repository import Store

WRITERS = 8


def _post(url: str, path: str, body: bytes, token: str) -> tuple[int, bytes, str]:
    request = urllib.request.Request(
        url + path,
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, answer.read(), answer.headers.get("Location", "")


def test_sigkill_midway_loses_no_acknowledged_write(
    database_url: str, signer: Signer, store: Store, tmp_path: Path
) -> None:
    seconds = float(os.environ.get("LOCKD_CRASH_TEST_SECONDS", "30"))
    token = store.create_token("writer", "recorder", actor="test")
    env = {"LOCKD_DATABASE_URL": database_url, "LOCKD_TRUSTED_KEYS": str(signer.public)}
    log = (tmp_path / "server.log").open("ab")
    server = Server(env, log=log).start()
    base = observation(image(1))
    _post(server.url, "/v1/manifests", envelope(signer.key, base).to_json(), token)
    verify_body = json.dumps({"observation": observation_json(base)}).encode()

    acknowledged_manifests: set[str] = set()
    acknowledged_verifications: set[int] = set()
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def writer(n: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            try:
                if i % 2:
                    obs = observation(image(1000 * (n + 1) + i))
                    status, body, _ = _post(
                        server.url, "/v1/manifests", envelope(signer.key, obs).to_json(), token
                    )
                    with lock:
                        acknowledged_manifests.add(json.loads(body)["digest"])
                else:
                    status, _, location = _post(server.url, "/v1/verifications", verify_body, token)
                    with lock:
                        acknowledged_verifications.add(int(location.rsplit("/", 1)[1]))
                assert status in (200, 201)
            except urllib.error.HTTPError as e:
                with lock:
                    failures.append(f"{e.code} {e.read()[:200]!r}")
            except OSError:
                time.sleep(0.05)  # the server is down (killed): try again

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    time.sleep(seconds / 2)
    server.kill()
    with lock:
        before_kill = len(acknowledged_manifests) + len(acknowledged_verifications)
    server = Server(env, port=server.port, log=log).start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []
        assert before_kill > 0
        with lock:
            assert len(acknowledged_manifests) + len(acknowledged_verifications) > before_kill

        for digest in acknowledged_manifests:
            assert store.get_manifest(digest) is not None, digest
        for verification_id in acknowledged_verifications:
            assert store.get_verification(verification_id) is not None, verification_id

        verdict = store.verify_audit()
        assert verdict.ok, verdict
        stored = (
            len(store.find_manifests(limit=100_000)) + store.count_verifications() + 1  # token
        )
        assert verdict.entries == stored
        request = urllib.request.Request(
            server.url + "/v1/audit/verify", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert json.loads(answer.read())["ok"] is True
    finally:
        server.stop()
        log.close()
