"""What tests build on disk: installed distributions with their RECORDs, ld.so caches in glibc's
format, fake packages of the PyTorch family (shared by tests of several wings)."""

from __future__ import annotations

import base64
import hashlib
import struct
import textwrap
from pathlib import Path

from lockd.model.environment import Distribution

SITE = "/opt/venv/lib/python3.11/site-packages"


def digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def install(
    root: Path,
    name: str,
    version: str,
    files: dict[str, bytes],
    *,
    location: str = SITE,
    unhashed: tuple[str, ...] = (),
) -> Distribution:
    """Write a distribution's files and its dist-info (METADATA, RECORD) under ``root``, as pip
    would, and return the Distribution the probe would report for it."""
    site = root / location.lstrip("/")
    info = f"{name}-{version}.dist-info"
    files = {**files, f"{info}/METADATA": f"Name: {name}\nVersion: {version}\n\n".encode()}
    rows = []
    for rel, data in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows.append(f"{rel},{digest(data)},{len(data)}")
    for rel in unhashed:
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"compiled")
        rows.append(f"{rel},,")
    rows.append(f"{info}/RECORD,,")
    record = ("\n".join(rows) + "\n").encode()
    (site / info / "RECORD").write_bytes(record)
    return Distribution(
        name=name,
        version=version,
        installer="pip",
        location=location,
        record_sha256=hashlib.sha256(record).hexdigest(),
        files=len(rows),
    )


def ld_cache(paths: list[str], *, old: int = 0, shift: int = 0) -> bytes:
    """An ld.so.cache in glibc's format (``old``: entries of the old table before it), its
    entries' values pointing at ``paths`` (``shift`` bytes into each string)."""

    head = b""
    if old:
        head = b"ld.so-1.7.0\0" + struct.pack("<I", old) + b"\0" * (12 * old)
        head += b"\0" * (-len(head) % 8)
    strings = b""
    offsets = []
    table = 48 + 24 * len(paths)
    for path in paths:
        offsets.append(table + len(strings) + shift)
        strings += path.encode() + b"\0"
    new = b"glibc-ld.so.cache1.1" + struct.pack("<IIB3xI12x", len(paths), len(strings), 2, 0)
    for value in offsets:
        new += struct.pack("<iIIIQ", 0x303, value, value, 0, 0)
    return head + new + strings


def fake_distribution(site: Path, name: str, version: str, body: str) -> None:
    """A real installed package: a dist-info the probe finds and a module that imports."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (site / name).mkdir()
    (site / name / "__init__.py").write_text(textwrap.dedent(body))


BROKEN_EXTENSION = """
    import warnings
    warnings.warn("loading the compiled extension")
    try:
        raise OSError("libtorch_cuda.so: cannot open shared object file")
    except OSError as e:
        raise OSError("Could not load this library: lib/libext.so") from e
"""
