"""Audit bundles built from parts (no service): they verify offline, any altered file fails
naming that file, and unsafe archives are refused member by member."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from bundles import DIGEST, ENVELOPE, KEY, chain, run_lockd, sample_files
from reference_manifests import manifest_a

from lockd.bundle import (
    bundle_files,
    check_files,
    pack,
    read_bundle,
    render_verdict,
    verify_bundle,
)
from lockd.errors import InputError
from lockd.trust import dsse, keys
from lockd.trust.auditlog import entry_hash
from lockd.trust.statement import PAYLOAD_TYPE, make_statement

OTHER_KEY = keys.generate_private_key()
FILES = sample_files()


def test_a_bundle_holds_every_part_and_verifies() -> None:
    assert sorted(FILES) == [
        "README.md",
        "audit.json",
        "bundle.json",
        "envelope.dsse.json",
        "index.json",
        f"keys/{keys.keyid(KEY)}.pub",
        "lock.json",
        "reports/7.json",
        "reports/9.json",
        "sbom.cdx.json",
    ]
    meta = json.loads(FILES["bundle.json"])
    assert meta["manifest_audit_seq"] == 5
    assert [(r["id"], r["audit_seq"]) for r in meta["reports"]] == [(7, 7), (9, 9)]
    verdict = check_files(FILES)
    assert verdict.ok, verdict.checks
    assert verdict.keyids == [keys.keyid(KEY)]
    assert [c.id for c in verdict.checks] == ["files", "signature", "sbom", "audit"]
    assert "audit.json entries 5-9 chain correctly" in verdict.checks[3].message
    assert b"lockd audit verify bundle.tar.gz" in FILES["README.md"]


def test_packing_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    assert pack(FILES) == pack(dict(reversed(list(FILES.items()))))
    path = tmp_path / "b.tar.gz"
    path.write_bytes(pack(FILES))
    files, refused = read_bundle(path)
    assert files == FILES and refused == []
    assert verify_bundle(path).ok


def _altered(data: bytes) -> bytes:
    """One byte changed in the middle (JSON stays JSON where a letter or digit is hit)."""
    middle = len(data) // 2
    for i in list(range(middle, len(data))) + list(range(middle)):
        c = chr(data[i])
        if c.isalnum():
            swap = {"0": "1", "a": "b", "A": "B"}.get(c, "0" if c != "0" else "1")
            if swap == c:
                swap = "1"
            return data[:i] + swap.encode() + data[i + 1 :]
    return data + b" "


@pytest.mark.parametrize("name", sorted(FILES))
def test_a_bundle_with_any_file_altered_fails_naming_it(name: str, tmp_path: Path) -> None:
    altered = dict(FILES, **{name: _altered(FILES[name])})
    assert altered[name] != FILES[name]
    path = tmp_path / "altered.tar.gz"
    path.write_bytes(pack(altered))
    verdict = verify_bundle(path)
    assert not verdict.ok
    text = render_verdict(verdict, str(path))
    failed = [line for line in text.splitlines() if "FAIL" in line]
    assert failed and name in failed[0], text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra.txt": b"x"}, "extra.txt is not listed in index.json (added)"),
        ({"reports/9.json": None}, "reports/9.json is listed in index.json but missing"),
    ],
)
def test_added_and_removed_files_are_named(change: dict[str, bytes | None], message: str) -> None:
    files = {k: v for k, v in {**FILES, **change}.items() if v is not None}
    verdict = check_files(files)
    assert not verdict.ok
    assert message in verdict.checks[0].message


def test_a_bundle_resigned_with_another_key_still_names_its_keyid() -> None:
    """Whoever re-signs the envelope with their own key and recomputes the index gets a bundle
    that verifies against the key in it: the keyid printed is what a reader compares."""
    envelope = dsse.sign(make_statement(manifest_a()), PAYLOAD_TYPE, OTHER_KEY)
    files = dict(FILES)
    del files[f"keys/{keys.keyid(KEY)}.pub"]
    files["envelope.dsse.json"] = envelope.to_json()
    files[f"keys/{keys.keyid(OTHER_KEY)}.pub"] = keys.public_pem(OTHER_KEY.public_key())
    from lockd.bundle import index_of

    files["index.json"] = index_of(files)
    verdict = check_files(files)
    assert verdict.keyids == [keys.keyid(OTHER_KEY)]
    assert [c.id for c in verdict.failed] == ["audit"]
    assert "envelope.dsse.json: no audit entry records its creation" in verdict.failed[0].message


def test_an_edited_audit_entry_breaks_thechain() -> None:
    entries = chain()
    entries[1]["actor"] = "mallory"
    entries[1]["hash"] = entry_hash(entries[1])
    files = dict(FILES, **{"audit.json": json.dumps(entries).encode()})
    from lockd.bundle import index_of

    files["index.json"] = index_of(files)
    verdict = check_files(files)
    assert [c.id for c in verdict.failed] == ["audit"]
    assert "entry 7 does not hold the hash of entry 6" in verdict.failed[0].message


def test_a_bundle_needs_the_manifests_own_entry() -> None:
    with pytest.raises(InputError, match="no audit entry in the segment records its creation"):
        bundle_files(
            digest=DIGEST,
            name="n",
            labels={},
            server="http://s",
            exported_at="t",
            envelope=ENVELOPE,
            public_keys=[KEY.public_key()],
            reports=[],
            entries=chain()[1:],
        )


def _tar(members: list[tarfile.TarInfo], data: bytes = b"x") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return gzip.compress(raw.getvalue())


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size if kind == tarfile.REGTYPE else 0
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_member("/etc/passwd"), "'/etc/passwd': an absolute path or a '.'/'..' segment"),
        (_member("../evil"), "'../evil': an absolute path or a '.'/'..' segment"),
        (_member("keys/../../evil"), "an absolute path or a '.'/'..' segment"),
        (_member("link", tarfile.SYMTYPE), "'link': not a regular file"),
        (_member("hard", tarfile.LNKTYPE), "'hard': not a regular file"),
        (_member("dir", tarfile.DIRTYPE), "'dir/': not a regular file (a folder)"),
        (_member("fifo", tarfile.FIFOTYPE), "'fifo': not a regular file"),
    ],
)
def test_unsafe_members_are_refused(member: tarfile.TarInfo, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(_tar([member]))
    files, refused = read_bundle(path)
    assert files == {}
    assert len(refused) == 1 and reason in refused[0]
    verdict = verify_bundle(path)
    assert not verdict.ok
    assert "unsafe archive members refused" in verdict.checks[0].message


def test_audit_verify_of_an_altered_bundle_exits_1_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "altered.tar.gz"
    path.write_bytes(pack(dict(FILES, **{"reports/7.json": _altered(FILES["reports/7.json"])})))
    result = run_lockd("audit", "verify", path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL files     reports/7.json was altered" in result.stdout
    assert "the bundle does NOT hold: files, audit failed" in result.stdout


def test_a_huge_member_is_refused_without_reading_it(tmp_path: Path) -> None:
    info = _member("sbom.cdx.json")
    info.size = 65 * 1024 * 1024
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    path = tmp_path / "huge.tar.gz"
    path.write_bytes(gzip.compress(raw.getvalue()))
    files, refused = read_bundle(path)
    assert files == {} and refused == [f"'sbom.cdx.json': too large ({info.size} bytes)"]


def test_audit_verify_json(tmp_path: Path) -> None:
    path = tmp_path / "b.tar.gz"
    path.write_bytes(pack(FILES))
    result = run_lockd("audit", "verify", path, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    body = json.loads(result.stdout)
    assert body["ok"] is True and body["digest"] == DIGEST
    assert body["keyids"] == [keys.keyid(KEY)]


def test_audit_verify_text_names_the_keyid(tmp_path: Path) -> None:
    path = tmp_path / "b.tar.gz"
    path.write_bytes(pack(FILES))
    result = run_lockd("audit", "verify", path)
    assert result.returncode == 0
    assert f"the bundle holds: signed by keyid {keys.keyid(KEY)}" in result.stdout


def _sbom_changed(change: Any) -> dict[str, bytes]:
    from lockd.bundle import index_of

    sbom = json.loads(FILES["sbom.cdx.json"])
    change(sbom["components"])
    files = {k: v for k, v in FILES.items() if k != "index.json"}
    files["sbom.cdx.json"] = json.dumps(sbom).encode()
    return {**files, "index.json": index_of(files)}


def _drop(ref: str) -> Any:
    return lambda components: components.remove(next(c for c in components if c["bom-ref"] == ref))


def _bump(ref: str) -> Any:
    return lambda components: next(c for c in components if c["bom-ref"] == ref).update(
        version="9.9"
    )


def _extra(components: list[dict[str, Any]]) -> None:
    components.append({"bom-ref": "pkg:pypi/evil@1", "name": "evil", "version": "1"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_drop("pkg:pypi/numpy@2.3.4"), "it leaves out pkg:pypi/numpy@2.3.4"),
        (_bump("pkg:pypi/numpy@2.3.4"), "pkg:pypi/numpy@2.3.4 is not the manifest's"),
        (_extra, "it lists pkg:pypi/evil@1, which the manifest does not hold"),
    ],
)
def test_an_sbom_that_misstates_the_manifest_fails(change: Any, message: str) -> None:
    verdict = check_files(_sbom_changed(change))
    assert [c.id for c in verdict.failed] == ["sbom"]
    assert verdict.failed[0].message == (
        f"sbom.cdx.json does not match the signed manifest's components: {message}"
    )


def test_an_older_lockds_sbom_without_a_component_it_did_not_derive_holds() -> None:
    """An SBOM written before lockd derived cuBLAS (or gave CUDA components purls): what it
    lists agrees with the manifest, so the bundle holds, and the check says what it lacks."""
    cublas = next(
        c["bom-ref"]
        for c in json.loads(FILES["sbom.cdx.json"])["components"]
        if "cublas" in c["bom-ref"]
    )
    verdict = check_files(_sbom_changed(_drop(cublas)))
    assert verdict.ok, verdict.checks
    assert verdict.checks[2].message.endswith(
        f"(an older lockd's SBOM: it agrees on every component it lists, and leaves out "
        f"{cublas}, which this lockd derives; their properties were not compared)"
    )
