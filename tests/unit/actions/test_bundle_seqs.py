"""The audit entries a bundle relies on (bundle.json's manifest_audit_seq and each report's
audit_seq) are read in one place (lockd.bundle.layout.relied_on): only a JSON integer from 1 up
is a seq, so the audit chain's check and the log's check prove the same entries. A forged
bundle whose seq is ``true`` or ``1.0`` (entry 1 to a dict lookup, nothing to a check that
skips non-integers) used to pass with the real log key pinned (#18)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from bundles import LOG_SIGNER, chain, log_entries, log_proof, run_lockd, sample_files
from reference_manifests import manifest_b

from lockd.bundle import bundle_files, check_files, index_of, pack
from lockd.bundle.logproof import LogProof, check_log
from lockd.errors import InputError
from lockd.trust import dsse, keys
from lockd.trust.auditlog import entry_hash
from lockd.trust.statement import PAYLOAD_TYPE, make_statement

PINNED = LOG_SIGNER.verifier()  # the real service's log key, public to any reader
REAL = log_proof(log_entries(chain()))  # the real service's checkpoint, as it serves it
SEQ_RANGE = "an integer from 1 to 9223372036854775807"


def _rewritten(files: dict[str, bytes], change: Any) -> dict[str, bytes]:
    """bundle.json changed by ``change(meta)``, index.json recomputed (it is not signed)."""
    meta = json.loads(files["bundle.json"])
    change(meta)
    files = {**files, "bundle.json": (json.dumps(meta, indent=2) + "\n").encode()}
    files = {k: v for k, v in files.items() if k != "index.json"}
    return {**files, "index.json": index_of(files)}


def _forged(seq: object) -> dict[str, bytes]:
    """An attacker's manifest signed by their key, an audit entry 1 they made up, the real
    service's checkpoint and key, no proof at all; bundle.json's manifest_audit_seq ``seq``."""
    evil = keys.generate_private_key()
    envelope = dsse.sign(make_statement(manifest_b()), PAYLOAD_TYPE, evil).to_json()
    payload = dsse.parse_envelope(envelope, "e").payload_bytes()
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    entry: dict[str, Any] = {
        "seq": 1,
        "time": "2026-12-07T00:00:00Z",
        "actor": "ci",
        "action": "manifest.create",
        "subject": digest,
        "body_digest": "sha256:" + hashlib.sha256(envelope).hexdigest(),
        "prev_hash": "0" * 64,
    }
    entry["hash"] = entry_hash(entry)
    files = bundle_files(
        digest=digest,
        name="evil",
        labels={},
        server="http://127.0.0.1:8080",
        exported_at="2026-12-07T00:00:00Z",
        envelope=envelope,
        public_keys=[evil.public_key()],
        reports=[],
        entries=[entry],
        log=LogProof(REAL.note, REAL.key, REAL.size, {}),
    )
    return _rewritten(files, lambda meta: meta.update(manifest_audit_seq=seq))


@pytest.mark.parametrize(("seq", "shown"), [(True, "true"), (1.0, "1.0")])
def test_a_forged_bundle_whose_seq_is_not_an_integer_fails_with_the_real_key_pinned(
    seq: object, shown: str, tmp_path: Path
) -> None:
    verdict = check_files(_forged(seq), log_key=PINNED)
    assert not verdict.ok
    assert [(c.id, c.ok, c.message) for c in verdict.checks] == [
        ("files", True, "10 files match index.json"),
        (
            "bundle",
            False,
            f"bundle.json: manifest_audit_seq is {shown}, not an audit entry's seq ({SEQ_RANGE})",
        ),
    ]
    path = tmp_path / "forged.tar.gz"
    path.write_bytes(pack(_forged(seq)))
    result = run_lockd("audit", "verify", path, "--log-key", PINNED)
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout.splitlines()[-2:] == [
        f"  FAIL bundle    bundle.json: manifest_audit_seq is {shown}, not an audit entry's seq "
        f"({SEQ_RANGE})",
        "the bundle does NOT hold: bundle failed",
    ]


def test_the_same_forgery_with_an_integer_seq_fails_the_log_check_naming_the_entry() -> None:
    """The log check proves every entry the chain check relied on: entry 1 has no proof."""
    verdict = check_files(_forged(1), log_key=PINNED)
    assert [(c.id, c.message) for c in verdict.failed] == [
        ("log", "log/inclusion.json holds no proof for audit entry 1")
    ]


def test_a_log_check_of_no_entry_is_refused() -> None:
    with pytest.raises(InputError) as e:
        check_log(sample_files(log=REAL), {}, [], PINNED)
    assert str(e.value) == "no audit entry to prove in the log: the bundle relies on none"


def _set_report(key: str, value: object) -> Any:
    return lambda meta: meta["reports"][0].update({key: value})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        *(
            (
                lambda meta, v=value: meta.update(manifest_audit_seq=v),
                f"bundle.json: manifest_audit_seq is {shown}, not an audit entry's seq "
                f"({SEQ_RANGE})",
            )
            for value, shown in [
                ([], "a list"),
                ({}, "an object"),
                (None, "null"),
                ("5", '"5"'),
                ("x" * 1000, '"' + "x" * 40 + '"...'),
                (0, "0"),
                (-5, "-5"),
                (2**63, "9223372036854775808"),
                (10**60, "1" + "0" * 39 + "..."),
                (5.0, "5.0"),
                (False, "false"),
            ]
        ),
        (
            _set_report("audit_seq", [7]),
            f"bundle.json: reports[0].audit_seq is a list, not an audit entry's seq ({SEQ_RANGE})",
        ),
        (
            _set_report("audit_seq", True),
            f"bundle.json: reports[0].audit_seq is true, not an audit entry's seq ({SEQ_RANGE})",
        ),
        (
            _set_report("file", ["reports/7.json"]),
            "bundle.json: reports[0] names no file under reports/",
        ),
        (
            _set_report("file", "envelope.dsse.json"),
            "bundle.json: reports[0] names no file under reports/",
        ),
        (
            lambda meta: meta["reports"].append("x"),
            "bundle.json: reports[2] names no file under reports/",
        ),
        (lambda meta: meta.update(reports={}), "bundle.json: reports is an object, not a list"),
        (lambda meta: meta.pop("reports"), "bundle.json: reports is null, not a list"),
    ],
)
def test_a_hostile_seq_in_bundle_json_fails_the_bundle_check_exactly(
    change: Any, message: str, tmp_path: Path
) -> None:
    files = _rewritten(sample_files(), change)
    verdict = check_files(files)
    assert [(c.id, c.message) for c in verdict.failed] == [("bundle", message)]
    path = tmp_path / "b.tar.gz"
    path.write_bytes(pack(files))
    result = run_lockd("audit", "verify", path, "--json")
    assert (result.returncode, result.stderr) == (1, "")
    body = json.loads(result.stdout)
    assert [(c["id"], c["message"]) for c in body["checks"] if not c["ok"]] == [("bundle", message)]


@pytest.mark.parametrize(
    ("seq", "message"),
    [
        (True, f"audit.json: entry [0]'s seq is true, not an audit entry's seq ({SEQ_RANGE})"),
        (5.0, f"audit.json: entry [0]'s seq is 5.0, not an audit entry's seq ({SEQ_RANGE})"),
        ([5], f"audit.json: entry [0]'s seq is a list, not an audit entry's seq ({SEQ_RANGE})"),
    ],
)
def test_a_hostile_seq_in_audit_json_fails_the_audit_and_log_checks(
    seq: object, message: str
) -> None:
    entries = chain()
    entries[0]["seq"] = seq
    files = sample_files(log=REAL)
    files = {**files, "audit.json": (json.dumps(entries, indent=2) + "\n").encode()}
    files = {k: v for k, v in files.items() if k != "index.json"}
    verdict = check_files({**files, "index.json": index_of(files)}, log_key=PINNED)
    assert [(c.id, c.message) for c in verdict.failed] == [("audit", message), ("log", message)]


def test_a_number_past_what_json_reads_fails_as_not_json(tmp_path: Path) -> None:
    files = sample_files()
    meta = files["bundle.json"].replace(
        b'"manifest_audit_seq": 5', b'"manifest_audit_seq": ' + b"9" * 5000
    )
    files = {k: v for k, v in {**files, "bundle.json": meta}.items() if k != "index.json"}
    verdict = check_files({**files, "index.json": index_of(files)})
    assert [(c.id, c.message) for c in verdict.failed] == [
        (
            "bundle",
            "bundle.json is not JSON (Exceeds the limit (4300 digits) for integer string "
            "conversion: value has 5000 digits; use sys.set_int_max_str_digits() to increase "
            "the limit)",
        )
    ]


def test_two_entries_with_one_seq_fail() -> None:
    entries = chain()
    entries.append(dict(entries[-1]))
    files = {**sample_files(), "audit.json": (json.dumps(entries) + "\n").encode()}
    files = {k: v for k, v in files.items() if k != "index.json"}
    verdict = check_files({**files, "index.json": index_of(files)})
    assert [(c.id, c.message) for c in verdict.failed] == [
        ("audit", "audit.json: two entries hold the same seq")
    ]
