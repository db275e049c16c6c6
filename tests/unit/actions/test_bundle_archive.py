"""Reading bundles as untrusted archives (lockd/bundle/archive.py): every header's declared size
is bounded before it is read, a malformed archive is refused whole (exit 2) with an exact
message, an unsafe member is refused by name (the bundle then fails: exit 1), and whatever
tarfile writes reads back as tarfile reads it."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from pathlib import Path

import pytest
from bundles import (
    extended,
    header,
    huge_extended_header,
    member,
    pax_record,
    run_lockd,
    sample_files,
    tar_gz,
)

from lockd.bundle import pack, read_bundle
from lockd.bundle.archive import Limits, read_tar_gz
from lockd.errors import InputError

AS_LIMIT = 512 * 1024 * 1024  # a normal audit verify peaks near 300 MiB of address space


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "hostile.tar.gz"
    path.write_bytes(data)
    return path


def _refusal(path: Path, limits: Limits | None = None) -> str:
    with pytest.raises(InputError) as caught:
        read_tar_gz(path, limits or Limits())
    assert caught.value.exit_code == 2
    return str(caught.value)


def _noise(n: int) -> bytes:
    """Incompressible, deterministic bytes."""
    out = b""
    while len(out) < n:
        out += hashlib.sha256(len(out).to_bytes(8, "big")).digest()
    return out[:n]


def test_a_1_gib_pax_header_in_a_1_mb_bundle_exits_2_under_an_address_space_limit(
    tmp_path: Path,
) -> None:
    """Python's tarfile holds the whole declared header (1.1 GB, about 15 s, before this
    reader): under RLIMIT_AS it died of MemoryError. A normal bundle verifies under the same
    limit, so the limit is not what refuses the hostile one."""
    normal = tmp_path / "normal.tar.gz"
    normal.write_bytes(pack(sample_files()))
    ok = run_lockd("audit", "verify", normal, address_space=AS_LIMIT)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    hostile = tmp_path / "pax.tar.gz"
    hostile.write_bytes(huge_extended_header(b"x", 1 << 30))
    assert hostile.stat().st_size < 1_100_000
    result = run_lockd("audit", "verify", hostile, address_space=AS_LIMIT)
    assert result.returncode == 2, result.stdout + result.stderr
    assert " ".join(result.stderr.split()) == (
        f"lockd: error: {hostile}: a PAX extended header declaring 1073741824 bytes; lockd "
        "reads at most 65536 (tar header at byte 0); refused unread"
    )


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        (b"x", "a PAX extended header"),
        (b"g", "a PAX global header"),
        (b"L", "a GNU long name header"),
        (b"K", "a GNU long link header"),
    ],
)
def test_every_extended_header_is_bounded_before_it_is_read(
    kind: bytes, what: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, huge_extended_header(kind, 1 << 20))
    assert _refusal(path) == (
        f"{path}: {what} declaring 1048576 bytes; lockd reads at most 65536 (tar header at "
        "byte 0); refused unread"
    )


# (archive bytes, the refusal after "PATH: ")
ARCHIVE_REFUSALS = {
    "empty file": (
        b"",
        "not a gzip-compressed tar archive (an empty file); give a bundle written by lockd "
        "audit export",
    ),
    "not gzip": (
        b"not a tar",
        "not a gzip-compressed tar archive (Error -3 while decompressing data: incorrect header "
        "check); give a bundle written by lockd audit export",
    ),
    "gzip of no tar": (
        gzip.compress(b""),
        "not a gzip-compressed tar archive (no tar header); give a bundle written by lockd "
        "audit export",
    ),
    "truncated header": (
        gzip.compress(member(b"a")[:300]),
        "the archive ends inside a header at byte 300 (truncated); give a whole bundle written "
        "by lockd audit export",
    ),
    "truncated data": (
        gzip.compress(header(b"a", size=1000) + b"x" * 100),
        "the archive ends inside the data of 'a' at byte 612 (truncated); give a whole bundle "
        "written by lockd audit export",
    ),
    "truncated gzip": (
        tar_gz(member(b"a", _noise(8192)))[:4000],
        "the gzip stream ends early (truncated); give a whole bundle written by lockd audit export",
    ),
    "bad checksum": (
        tar_gz(header(b"a", checksum=b"000000\0 ")),
        "a bad header checksum: not a tar archive, or a damaged one (tar header at byte 0); "
        "refused unread",
    ),
    "no ustar magic": (
        tar_gz(header(b"a", magic=b"\0" * 8)),
        "not a ustar header (tar header at byte 0); refused unread",
    ),
    "size not octal": (
        tar_gz(header(b"a", size_field=b"0000000001z\0")),
        "a malformed size field (tar header at byte 0); refused unread",
    ),
    "negative base-256 size": (
        tar_gz(header(b"a", size_field=b"\xff" * 12)),
        "a malformed size field (tar header at byte 0); refused unread",
    ),
    "absurd base-256 size": (
        tar_gz(header(b"a", size_field=b"\x80" + (1 << 60).to_bytes(11, "big"))),
        "'a' declares 1152921504606846976 bytes, past the 320 MiB an archive may hold (tar "
        "header at byte 0); refused unread",
    ),
    "absurd octal size": (
        tar_gz(member(b"first") + header(b"a", size=0o77777777777)),
        "'a' declares 8589934591 bytes, past the 320 MiB an archive may hold (tar header at "
        "byte 1024); refused unread",
    ),
    "absurd PAX size": (
        tar_gz(extended(b"x", pax_record(b"size", b"99999999999")) + member(b"a")),
        "'a' declares 99999999999 bytes, past the 320 MiB an archive may hold (tar header at "
        "byte 1024); refused unread",
    ),
    "PAX size not a number": (
        tar_gz(extended(b"x", pax_record(b"size", b"-1")) + member(b"a")),
        "a PAX size that is not a number: b'-1' (tar header at byte 0); refused unread",
    ),
    "malformed PAX record": (
        tar_gz(extended(b"x", b"path=a\n") + member(b"a")),
        "a malformed PAX extended header (tar header at byte 0); refused unread",
    ),
    "PAX record longer than its header": (
        tar_gz(extended(b"x", b"99 path=a\n") + member(b"a")),
        "a malformed PAX extended header (tar header at byte 0); refused unread",
    ),
    "two PAX headers for one member": (
        tar_gz(extended(b"x", pax_record(b"path", b"a")) * 2 + member(b"a")),
        "a second PAX extended header for one member (tar header at byte 1024); refused unread",
    ),
    "a PAX global header naming the members": (
        tar_gz(extended(b"g", pax_record(b"path", b"index.json")) + member(b"a")),
        "a PAX global header setting path (tar header at byte 0); refused unread",
    ),
    "an extended header and no member": (
        tar_gz(extended(b"L", b"name\0")),
        "an extended header followed by no member (tar header at byte 1024); refused unread",
    ),
    "a link declaring data": (
        tar_gz(header(b"l", kind=b"2", size=10) + b"x" * 512),
        "'l', a symbolic link, declares 10 bytes of data (tar header at byte 0); refused unread",
    ),
    "a sparse map without end": (
        tar_gz(
            header(b"s", kind=b"S", sparse_extended=True)
            + (b"\0" * 504 + b"\1").ljust(512, b"\0") * 17
        ),
        "a sparse map of more than 16 extension headers (tar header at byte 0); refused unread",
    ),
}


@pytest.mark.parametrize(("data", "message"), ARCHIVE_REFUSALS.values(), ids=ARCHIVE_REFUSALS)
def test_a_malformed_archive_is_refused_whole_with_exit_2(
    data: bytes, message: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, data)
    assert _refusal(path) == f"{path}: {message}"


def test_too_many_members_are_refused_at_the_first_past_the_limit(tmp_path: Path) -> None:
    entries = b"".join(member(b"f%d" % i, b"") for i in range(10_000))
    path = _write(tmp_path, tar_gz(entries + member(b"one-more", b"")))
    assert _refusal(path) == (
        f"{path}: more than 10000 entries (tar header at byte 5120000); refused unread"
    )
    globals_only = _write(tmp_path, tar_gz(extended(b"g", b"") * 3))
    assert _refusal(globals_only, Limits(members=2)) == (
        f"{globals_only}: more than 2 entries (tar header at byte 1024); refused unread"
    )


def test_past_100_unsafe_members_the_archive_is_refused_whole(tmp_path: Path) -> None:
    """Each refusal names its member: their number is bounded, so is what the report holds."""
    links = [header(b"l%d" % i, kind=b"2") for i in range(101)]
    path = _write(tmp_path, tar_gz(*links))
    assert _refusal(path) == (
        f"{path}: more than 100 unsafe members (tar header at byte 51200); refused unread"
    )
    files, refused = read_tar_gz(_write(tmp_path, tar_gz(*links[:100])))
    assert files == {} and len(refused) == 100


def test_the_inflated_stream_is_bounded(tmp_path: Path) -> None:
    comment = extended(b"g", pax_record(b"comment", b"y" * 1000))
    path = _write(tmp_path, tar_gz(comment * 20))
    assert _refusal(path, Limits(stream=8192)) == (
        f"{path}: more than 8 KiB once inflated; refused unread"
    )


def test_the_compressed_file_is_bounded(tmp_path: Path) -> None:
    path = _write(tmp_path, tar_gz(member(b"a", _noise(600_000))))
    assert _refusal(path, Limits(compressed=300_000)) == (
        f"{path}: larger than 292 KiB, too large to be a bundle file"
    )


# (archive parts, the refusal listed for the member)
MEMBER_REFUSALS = {
    "absolute": ([member(b"/etc/passwd")], "'/etc/passwd': an absolute path or a '.'/'..' segment"),
    "dot-dot": (
        [member(b"keys/../../x")],
        "'keys/../../x': an absolute path or a '.'/'..' segment",
    ),
    "backslash": ([member(b"..\\x")], "'..\\\\x': an absolute path or a '.'/'..' segment"),
    "dot-dot by PAX path": (
        [extended(b"x", pax_record(b"path", b"../../etc/cron.d/x")), member(b"harmless")],
        "'../../etc/cron.d/x': an absolute path or a '.'/'..' segment",
    ),
    "dot-dot by GNU long name": (
        [extended(b"L", b"../" * 40 + b"x\0"), member(b"harmless")],
        f"'{'../' * 33}.'… (121 characters): an absolute path or a '.'/'..' segment",
    ),
    "dot-dot by ustar prefix": (
        [header(b"x", size=1, prefix=b"..") + member(b"x")[512:]],
        "'../x': an absolute path or a '.'/'..' segment",
    ),
    "symbolic link": ([header(b"l", kind=b"2")], "'l': not a regular file (a symbolic link)"),
    "hard link": ([header(b"h", kind=b"1")], "'h': not a regular file (a hard link)"),
    "character device": ([header(b"c", kind=b"3")], "'c': not a regular file (a character device)"),
    "block device": ([header(b"b", kind=b"4")], "'b': not a regular file (a block device)"),
    "FIFO": ([header(b"p", kind=b"6")], "'p': not a regular file (a FIFO)"),
    "folder": ([header(b"d/", kind=b"5")], "'d/': not a regular file (a folder)"),
    "GNU sparse": ([member(b"s", kind=b"S")], "'s': not a regular file (a sparse file)"),
    "PAX sparse": (
        [extended(b"x", pax_record(b"GNU.sparse.major", b"1")), member(b"s")],
        "'s': not a regular file (a sparse file)",
    ),
    "unknown type": ([member(b"v", kind=b"V")], "'v': not a regular file (of type b'V')"),
    "not UTF-8": ([member(b"\xff\xfe")], "b'\\xff\\xfe': a name that is not UTF-8"),
    "control character": ([member(b"a\x1bb")], "'a\\x1bb': a control character in the name"),
    "duplicate": ([member(b"a", b"1"), member(b"a", b"2")], "'a': appears twice"),
    "a name past 4096 bytes": (
        [extended(b"x", pax_record(b"path", b"n" * 5000)), member(b"harmless")],
        f"{b'n' * 100!r}… (5000 bytes): a name of 5000 bytes (at most 4096)",
    ),
}


@pytest.mark.parametrize(("parts", "reason"), MEMBER_REFUSALS.values(), ids=MEMBER_REFUSALS)
def test_an_unsafe_member_is_refused_by_name(
    parts: list[bytes], reason: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, tar_gz(*parts, member(b"after", b"kept")))
    files, refused = read_tar_gz(path)
    assert refused == [reason]
    assert files.get("after") == b"kept"  # the archive is read past the refused member
    assert "harmless" not in files


def test_an_unsafe_member_fails_audit_verify_with_exit_1(tmp_path: Path) -> None:
    parts = [member(name.encode(), data) for name, data in sorted(sample_files().items())]
    path = _write(tmp_path, tar_gz(*parts, header(b"evil", kind=b"2")))
    assert read_tar_gz(path)[0] == sample_files()
    result = run_lockd("audit", "verify", path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "FAIL files     unsafe archive members refused: 'evil': not a regular file (a symbolic "
        "link)"
    ) in result.stdout


@pytest.mark.parametrize(
    "tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]
)
def test_what_tarfile_writes_reads_back_as_tarfile_reads_it(
    tar_format: int, tmp_path: Path
) -> None:
    """Long names (a ustar prefix, a GNU long name, a PAX path), non-ASCII names, sizes that
    end on a block and not; concatenated gzip members too."""
    files = {
        "a": b"",
        "block": b"z" * 512,
        "reports/" + "r" * 90 + "/" + "n" * 60 + ".json": b"{}",
        "keys/k": _noise(1000),
    }
    if tar_format != tarfile.USTAR_FORMAT:  # what ustar cannot name
        files["keys/" + "k" * 120] = b"long"
        files["ü/" + "é" * 80] = b"utf-8"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tar_format) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        by_tarfile = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    assert by_tarfile == files
    half = len(tar_bytes) // 2
    path = _write(tmp_path, gzip.compress(tar_bytes[:half]) + gzip.compress(tar_bytes[half:]))
    assert read_tar_gz(path) == (files, [])


def test_a_bundle_reads_back_whole(tmp_path: Path) -> None:
    files = sample_files()
    path = _write(tmp_path, pack(files))
    assert read_bundle(path) == (files, [])


def test_a_missing_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "none.tar.gz"
    assert _refusal(path) == f"{path}: no such bundle file; check the path"
    assert re.search(
        "no such bundle file", " ".join(run_lockd("audit", "verify", path).stderr.split())
    )
