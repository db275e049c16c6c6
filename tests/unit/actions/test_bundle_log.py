"""Audit bundles carry the transparency log's proof (lockd/bundle/logproof.py): the signed
checkpoint, the log's key and the inclusion proof of each entry the bundle relies on, checked
offline against a pinned key (--log-key) or, said to be unpinned, the bundled one. Bundles
exported before the log was signed still verify as they did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bundles import (
    LOG_SIGNER,
    chain,
    leaf,
    log_entries,
    log_proof,
    run_lockd,
    sample_files,
)

from lockd.bundle import check_files, index_of, pack, render_verdict, verify_bundle
from lockd.bundle.logproof import CHECKPOINT, INCLUSION, KEY, LOG_FILES
from lockd.trust.checkpoint import LogSigner
from lockd.trust.merkle import MemoryTree, tree_root

PINNED = LOG_SIGNER.verifier()
LOG = log_entries(chain())
FILES = sample_files(log=log_proof(LOG))


def _reindexed(files: dict[str, bytes]) -> dict[str, bytes]:
    """As whoever changes a bundle would: index.json recomputed (it is not signed)."""
    files = {k: v for k, v in files.items() if k != "index.json"}
    return {**files, "index.json": index_of(files)}


def _log_check(files: dict[str, bytes], pinned: bool = True) -> tuple[bool, str]:
    verdict = check_files(files, log_key=PINNED if pinned else None)
    [log] = [c for c in verdict.checks if c.id == "log"]
    assert [c.id for c in verdict.failed] == ([] if log.ok else ["log"]), verdict.checks
    return log.ok, log.message


def test_a_bundle_with_the_logs_proof_verifies_against_the_pinned_key() -> None:
    assert sorted(set(FILES) - set(sample_files())) == sorted(LOG_FILES)
    verdict = check_files(FILES, log_key=PINNED)
    assert verdict.ok, verdict.checks
    assert (verdict.log_key, verdict.log_key_pinned) == (str(PINNED), True)
    root = _root(LOG)
    assert verdict.checks[-1].message == (
        f"audit entries 5, 7, 9 are in the log 'lockd.test/audit' of 12 entries (root {root}), "
        f"its checkpoint signed by the pinned key {PINNED}"
    )
    assert render_verdict(verdict, "b").splitlines()[-1] == (
        f"its audit entries are in the log signed by the pinned key {PINNED}"
    )


def _root(log: list[dict[str, object]]) -> str:
    return tree_root(len(log), MemoryTree(tuple(leaf(e) for e in log))).hex()


def test_without_a_pinned_key_the_bundled_one_checks_and_is_said_not_pinned() -> None:
    verdict = check_files(FILES)
    assert verdict.ok
    assert (verdict.log_key, verdict.log_key_pinned) == (str(PINNED), False)
    assert verdict.checks[-1].message.endswith(
        f"its checkpoint signed by {PINNED}, the key the bundle carries, NOT pinned: compare it "
        "with the log's published key, or give --log-key"
    )
    assert render_verdict(verdict, "b").splitlines()[-1] == (
        f"its audit entries are in a log signed by {PINNED}, the key the bundle carries, NOT "
        "pinned: compare it with the log's published key, or give --log-key"
    )


def test_a_log_proof_made_with_another_key_fails_against_the_pinned_one() -> None:
    """Whoever re-makes the bundle can make their own log key, checkpoint and proofs: they
    check against the bundled key (which the output names), never against the pinned one."""
    mallory = LogSigner.generate("lockd.test/audit")
    files = sample_files(log=log_proof(LOG, mallory))
    assert check_files(files).ok
    ok, message = _log_check(files)
    assert not ok
    assert message == (
        f"{CHECKPOINT}: the note is signed by no trusted key (trusted: "
        f"lockd.test/audit+{PINNED.id.hex()}; signed by: lockd.test/audit+"
        f"{mallory.verifier().id.hex()})"
    )


def test_an_entry_the_signed_tree_does_not_hold_fails_naming_it() -> None:
    """The service signed a tree in which report 7's entry is another: the bundle's entry is
    not in the log the key signed."""
    other = [dict(e) for e in LOG]
    other[6]["actor"] = "mallory"  # entry 7, in the log only
    proof = log_proof(other)
    ok, message = _log_check(sample_files(log=proof))
    assert not ok
    root = _root(other)
    assert message == (
        f"audit entry 7: leaf 6 is not in the tree of size 12 with root {root}: the inclusion "
        "proof leads to another root"
    )


def test_a_checkpoint_older_than_the_entries_fails() -> None:
    proof = log_proof(LOG[:8], seqs=(5, 7))  # a tree of 8: entry 9 came later
    files = sample_files(log=proof)
    ok, message = _log_check(files)
    assert (ok, message) == (False, "log/inclusion.json holds no proof for audit entry 9")


def _with(files: dict[str, bytes], name: str, data: bytes | None) -> dict[str, bytes]:
    changed = {k: v for k, v in files.items() if k != name}
    if data is not None:
        changed[name] = data
    return _reindexed(changed)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        (
            KEY,
            b"not a key\n",
            f"{KEY}: verifier key: give <name>+<8 hex digits>+<base64 key>, as `lockd keygen "
            "--log-key` prints",
        ),
        (
            INCLUSION,
            b"{",
            f"{INCLUSION} is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        ),
        (
            INCLUSION,
            b'{"size": 11, "proofs": {}}',
            f'{INCLUSION} does not hold proofs in the checkpoint\'s tree of size 12 ({{"size": N, '
            '"proofs": {"<seq>": [hex hashes]}})',
        ),
        (
            INCLUSION,
            b'{"size": 12, "proofs": {"5": ["zz"]}}',
            f"{INCLUSION}: the proof of '5' is not a list of at most 128 hex SHA-256 hashes "
            "under an entry's seq",
        ),
        (
            CHECKPOINT,
            b"lockd.test/audit\n12\n",
            f"{CHECKPOINT}: the note has no blank line between its text and its signatures",
        ),
        (
            CHECKPOINT,
            None,
            f"{CHECKPOINT} missing: the bundle carries no whole transparency-log proof",
        ),
    ],
)
def test_a_malformed_log_file_fails_naming_it(name: str, data: bytes | None, message: str) -> None:
    ok, said = _log_check(_with(FILES, name, data))
    assert not ok
    assert said == message


def test_a_bundle_exported_before_the_log_still_verifies_as_it_did(
    asset: object, tmp_path: Path
) -> None:
    """A bundle written by lockd 7a88a05's code (tests/assets/bundles): the same checks pass,
    no log check runs, and the output says there is no log proof; with --log-key it fails."""
    path = asset("bundles/exported-before-the-log.tar.gz")  # type: ignore[operator]
    verdict = verify_bundle(path)
    assert verdict.ok
    assert [c.id for c in verdict.checks] == ["files", "signature", "sbom", "audit"]
    assert verdict.checks[2].message == (  # written before lockd derived cuBLAS (7eb1277)
        "sbom.cdx.json (10 components) and the lock match the signed manifest (an older lockd's "
        "SBOM: it agrees on every component it lists, and leaves out lockd:cuda:cublas@12.8.4, "
        "which this lockd derives; their properties were not compared)"
    )
    assert verdict.log_key is None
    result = run_lockd("audit", "verify", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == (
        "no transparency-log proof in it (exported before lockd's log was signed, or from a "
        "service without a log key): its entries are checked against their chain only"
    )
    pinned = verify_bundle(path, PINNED)
    assert [c.id for c in pinned.failed] == ["log"]
    assert pinned.failed[0].message == (
        f"{', '.join(LOG_FILES)} missing: the bundle carries no whole transparency-log proof"
    )


def test_stripping_the_log_files_fails_against_a_pinned_key() -> None:
    """An old-looking bundle made from a new one (log files removed, index recomputed) passes
    only where no key is pinned, as a bundle exported before the log would."""
    stripped = _reindexed({k: v for k, v in FILES.items() if k not in LOG_FILES})
    assert check_files(stripped).ok
    assert [c.id for c in check_files(stripped, log_key=PINNED).failed] == ["log"]


def test_the_log_files_are_in_the_index(tmp_path: Path) -> None:
    index = json.loads(FILES["index.json"])["files"]
    assert set(LOG_FILES) <= set(index)
    path = tmp_path / "b.tar.gz"
    path.write_bytes(pack(FILES))
    assert verify_bundle(path, PINNED).ok


def test_audit_verify_with_log_key_exits_0_pinned_and_1_for_another_key(tmp_path: Path) -> None:
    path = tmp_path / "b.tar.gz"
    path.write_bytes(pack(FILES))
    vkey = tmp_path / "log.vkey"
    vkey.write_text(f"{PINNED}\n")
    for given in (str(PINNED), vkey):  # the key's string, or a file holding it
        result = run_lockd("audit", "verify", path, "--log-key", given)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[-1] == (
            f"its audit entries are in the log signed by the pinned key {PINNED}"
        )
    other = LogSigner.generate("lockd.test/audit").verifier()
    refused = run_lockd("audit", "verify", path, "--log-key", other, "--json")
    assert refused.returncode == 1
    body = json.loads(refused.stdout)
    assert (body["ok"], body["log_key"], body["log_key_pinned"]) == (False, str(other), True)
    assert [c["id"] for c in body["checks"] if not c["ok"]] == ["log"]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("a+b+c", "verifier key: the key ID 'b' is not 8 lowercase hex digits"),
        (
            "/nonexistent/log.vkey",
            "/nonexistent/log.vkey: no such log verifier key file; check the path",
        ),
    ],
)
def test_a_bad_log_key_exits_2(given: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "b.tar.gz"
    path.write_bytes(pack(FILES))
    result = run_lockd("audit", "verify", path, "--log-key", given)
    assert result.returncode == 2
    assert " ".join(result.stderr.split()) == f"lockd: error: {message}"


def test_server_given_with_a_bundle_is_refused_not_ignored(tmp_path: Path) -> None:
    path = tmp_path / "b.tar.gz"
    path.write_bytes(pack(FILES))
    result = run_lockd(
        "audit", "verify", path, "--server", "http://127.0.0.1:9", "--log-key", PINNED
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert " ".join(result.stderr.split()) == (
        "lockd: error: --server checks a service's log, not a bundle: check the bundle alone "
        "(BUNDLE [--log-key KEY]), and the service's log in another run"
    )


def test_lockd_server_in_the_environment_does_not_stop_a_bundle_check(tmp_path: Path) -> None:
    path = tmp_path / "b.tar.gz"
    path.write_bytes(pack(FILES))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lockd",
            "audit",
            "verify",
            str(path),
            "--log-key",
            str(PINNED),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LOCKD_SERVER": "http://127.0.0.1:9"},
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert (body["ok"], body["log_key"], body["log_key_pinned"]) == (True, str(PINNED), True)


def test_a_bundle_whose_checkpoint_another_key_signed_exits_1_with_the_key_pinned(
    tmp_path: Path,
) -> None:
    """F1 of #18: the CLI once dropped --log-key; the log check must run against it."""
    mallory = LogSigner.generate("lockd.test/audit")
    path = tmp_path / "b.tar.gz"
    path.write_bytes(pack(sample_files(log=log_proof(LOG, mallory))))
    assert run_lockd("audit", "verify", path).returncode == 0  # its own key: said not pinned
    result = run_lockd("audit", "verify", path, "--log-key", PINNED, "--json")
    assert (result.returncode, result.stderr) == (1, "")
    body = json.loads(result.stdout)
    assert (body["ok"], body["log_key"], body["log_key_pinned"]) == (False, str(PINNED), True)
    assert [(c["id"], c["message"]) for c in body["checks"] if not c["ok"]] == [
        (
            "log",
            f"{CHECKPOINT}: the note is signed by no trusted key (trusted: "
            f"lockd.test/audit+{PINNED.id.hex()}; signed by: lockd.test/audit+"
            f"{mallory.verifier().id.hex()})",
        )
    ]
