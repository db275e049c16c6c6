"""What a shared object carries and what a process loaded: ELF sections, CUDA fat binaries, and
the record of the shared objects a process mapped.

This file runs in two places. On the host lockd imports it (``lockd.probe.fatbin``;
lockd.judgement.libraries
wraps it with lockd's errors and models). Inside a target, the environment probe and the GPU
suite run it from the source text lockd embeds into them
(``lockd.judgement.libraries.embed_reader``).
So, like them, it uses the standard library only, imports nothing of lockd, never shells out,
keeps to Python 3.8, and returns plain JSON-ready dicts. Run as a script it prints, for each
file named, what ``scan_binary`` finds::

    python3 lockd/probe/fatbin.py .../torch/lib/libtorch_cuda.so

Memory stays bounded whatever the file's size: only the ELF header, the section table, the
few sections it names and the fat binaries' headers are read (``os.pread``), never the code.

CUDA fat binaries. nvcc embeds the device code of each translation unit as a fat binary
container in the ``.nv_fatbin`` section (``__nv_relfatbin`` for relocatable device code). A
container is a 16-byte header (magic 0xBA55ED50, version, header size, size of what follows)
and entries, each a header and its payload: kind 1 is PTX, kind 2 an ELF cubin (SASS); the
header gives the architecture (``sm_XY`` for a cubin, ``compute_XY`` for PTX), the PTX ISA
version for PTX, and flags (bit 0x2000: the payload is compressed; bit 0x100000: an
arch-specific target such as ``sm_90a``). A GPU can run a container's kernels when one of its
cubins or its PTX fits (lockd.judgement.compat's rules), so coverage is judged per container: the
``groups`` of a file are its distinct sets of targets, with how many containers have each.
The layout was checked against NVIDIA's ``cuobjdump --list-elf/--list-ptx`` (docs/libraries.md).
"""

from __future__ import annotations

import os
import re
import struct
import sys
import time

TYPE_CHECKING = False  # typing costs an import; mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence
    from typing import Any

ELF_MAGIC = b"\x7fELF"
SHT_NOBITS = 8
SHT_DYNAMIC = 6
DT_NULL = 0
DT_SONAME = 14
SECTION_LIMIT = 65536 * 4  # sections a file may declare (the ELF format allows 2**32)
STRINGS_LIMIT = 4 * 1024 * 1024  # bytes of a section-name or dynamic string table read
DYNAMIC_LIMIT = 1024 * 1024

FATBIN_MAGIC = 0xBA55ED50
FATBIN_SECTION = ".nv_fatbin"  # the code the CUDA runtime loads
RELOCATABLE_SECTION = "__nv_relfatbin"  # relocatable device code (-rdc), for device linking
FATBIN_SECTIONS = (FATBIN_SECTION, RELOCATABLE_SECTION)
KIND_PTX = 1
KIND_ELF = 2
FLAG_COMPRESSED = 0x2000 | 0x8000  # LZ4 (CUDA 11.x/12.x), 0x8000 as CUDA 13 writes it
FLAG_ARCH_SPECIFIC = 0x100000
CONTAINER_HEADER = struct.Struct("<IHHQ")
ENTRY_HEADER = struct.Struct("<HHIQ")  # kind, (unknown), header size, payload size
ENTRY_HEADER_FULL = 64  # arch @28, flags @40, decompressed size @56
SEARCH_CHUNK = 1024 * 1024


class NotElfError(ValueError):
    """The file is not an ELF object, or its headers are cut short or inconsistent."""


def _pread(fd: int, size: int, offset: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.pread(fd, size - len(data), offset + len(data))
        if not chunk:
            break
        data += chunk
    return data


def _exact(fd: int, size: int, offset: int, what: str) -> bytes:
    data = _pread(fd, size, offset)
    if len(data) != size:
        raise NotElfError(f"{what} is cut short ({len(data)} of {size} bytes at offset {offset})")
    return data


# --- ELF ------------------------------------------------------------------------------------


def elf_sections(fd: int, file_size: int) -> dict[str, Any]:
    """The ELF header's class and byte order and the section table: each section's name,
    type, file offset, size and link. Raises NotElfError."""
    ident = _pread(fd, 64, 0)
    if ident[:4] != ELF_MAGIC:
        raise NotElfError("not an ELF file (no \\x7fELF magic)")
    if len(ident) < 52 or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        raise NotElfError("an ELF header of unknown class or byte order")
    wide = ident[4] == 2
    order = "<" if ident[5] == 1 else ">"
    if wide:
        if len(ident) < 64:
            raise NotElfError("the ELF header is cut short")
        (shoff,) = struct.unpack_from(order + "Q", ident, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", ident, 0x3A)
        layout, minimum = order + "IIQQQQIIQQ", 64
    else:
        (shoff,) = struct.unpack_from(order + "I", ident, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", ident, 0x2E)
        layout, minimum = order + "IIIIIIIIII", 40
    info: dict[str, Any] = {"class": 64 if wide else 32, "order": order, "sections": []}
    if shoff == 0:
        return info  # no section table (allowed: only the program headers matter to a loader)
    if shentsize < minimum:
        raise NotElfError(f"section headers of {shentsize} bytes (expected at least {minimum})")

    def header(index: int) -> tuple[int, ...]:
        raw = _exact(fd, minimum, shoff + index * shentsize, "the section table")
        return struct.unpack(layout, raw)

    if shnum == 0 or shstrndx == 0xFFFF:  # extended numbering: the real values in section 0
        first = header(0)
        shnum = shnum or first[5]
        if shstrndx == 0xFFFF:
            shstrndx = first[6]
    if shnum > SECTION_LIMIT or shoff + shnum * shentsize > file_size:
        raise NotElfError(f"a section table of {shnum} entries does not fit the file")
    table = _exact(fd, shnum * shentsize, shoff, "the section table")
    rows = [struct.unpack_from(layout, table, i * shentsize) for i in range(shnum)]
    names = b""
    if 0 < shstrndx < shnum:
        strings = rows[shstrndx]
        if strings[1] != SHT_NOBITS and strings[4] + strings[5] <= file_size:
            names = _pread(fd, min(strings[5], STRINGS_LIMIT), strings[4])
    for row in rows:
        name_at = row[0]
        end = names.find(b"\0", name_at) if name_at < len(names) else -1
        name = names[name_at:end].decode("ascii", "replace") if end >= 0 else ""
        info["sections"].append(
            {"name": name, "type": row[1], "offset": row[4], "size": row[5], "link": row[6]}
        )
    return info


def soname(fd: int, file_size: int, elf: Mapping[str, Any]) -> str | None:
    """DT_SONAME from the dynamic section, or None."""
    sections = elf["sections"]
    wide = elf["class"] == 64
    entry = struct.Struct(elf["order"] + ("qQ" if wide else "iI"))
    for section in sections:
        if section["type"] != SHT_DYNAMIC or not 0 <= section["link"] < len(sections):
            continue
        strings = sections[section["link"]]
        size = min(section["size"], DYNAMIC_LIMIT)
        if section["offset"] + size > file_size or strings["type"] == SHT_NOBITS:
            return None
        data = _pread(fd, size, section["offset"])
        for at in range(0, len(data) - entry.size + 1, entry.size):
            tag, value = entry.unpack_from(data, at)
            if tag == DT_NULL:
                break
            if tag == DT_SONAME and value < strings["size"]:
                raw = _pread(fd, min(4096, strings["size"] - value), strings["offset"] + value)
                return raw.split(b"\0", 1)[0].decode("utf-8", "replace") or None
        return None
    return None


# --- CUDA fat binaries ----------------------------------------------------------------------


def target_name(kind: int, arch: int, flags: int) -> str:
    """``sm_90``, ``sm_90a``, ``compute_50``: lockd.judgement.compat's spelling of a target."""
    prefix = "compute" if kind == KIND_PTX else "sm"
    suffix = "a" if flags & FLAG_ARCH_SPECIFIC else ""
    return f"{prefix}_{arch}{suffix}"


_TARGET_NUMBER = re.compile(r"_(\d+)([a-z]*)$")


def target_order(name: str) -> tuple[int, str, str]:
    match = _TARGET_NUMBER.search(name)
    if match is None:
        return (0, "", name)
    return (int(match.group(1)), match.group(2), name)


def _find_magic(fd: int, start: int, end: int) -> int | None:
    """The next container magic in [start, end), read in bounded chunks."""
    magic = struct.pack("<I", FATBIN_MAGIC)
    position = start
    while position < end:
        chunk = _pread(fd, min(SEARCH_CHUNK, end - position), position)
        if not chunk:
            return None
        found = chunk.find(magic)
        if found >= 0:
            return position + found
        position += max(len(chunk) - (len(magic) - 1), 1)
    return None


def fatbin_containers(fd: int, offset: int, size: int) -> Iterator[dict[str, Any]]:
    """Each fat binary container in the section at [offset, offset + size): its entries as
    (kind, arch, flags, PTX ISA major, minor, compressed) and the bytes of padding skipped
    before it. The last item carries ``error`` when the section is inconsistent (what came
    before it stands)."""
    position, end = offset, offset + size
    skipped = 0
    error: str | None = None
    while position + CONTAINER_HEADER.size <= end:
        magic, _version, header_size, fat_size = CONTAINER_HEADER.unpack(
            _exact(fd, CONTAINER_HEADER.size, position, "a fat binary header")
        )
        if magic != FATBIN_MAGIC:  # padding between containers: find the next one
            found = _find_magic(fd, position + 1, end)
            if found is None:
                return
            skipped += found - position
            position = found
            continue
        body, stop = position + header_size, position + header_size + fat_size
        if header_size < CONTAINER_HEADER.size or stop > end:
            error = f"a container at offset {position} overruns its section"
            yield {"entries": [], "skipped": skipped, "error": error}
            return
        entries = []
        at = body
        while at + ENTRY_HEADER.size <= stop:
            raw = _pread(fd, ENTRY_HEADER_FULL, at)
            kind, _unknown, entry_size, payload = ENTRY_HEADER.unpack_from(raw)
            if entry_size < ENTRY_HEADER.size or at + entry_size + payload > stop:
                error = f"an entry at offset {at} overruns its container"
                break
            arch = flags = major = minor = inflated = 0
            if entry_size >= 48 and len(raw) >= 48:
                minor, major, arch = struct.unpack_from("<HHI", raw, 24)
                (flags,) = struct.unpack_from("<Q", raw, 40)
            if entry_size >= ENTRY_HEADER_FULL and len(raw) >= ENTRY_HEADER_FULL:
                (inflated,) = struct.unpack_from("<Q", raw, 56)
            compressed = bool(flags & FLAG_COMPRESSED or inflated)
            entries.append((kind, arch, flags, major, minor, compressed))
            at += entry_size + payload
        item: dict[str, Any] = {"entries": entries, "skipped": skipped}
        skipped = 0
        if error is not None:
            item["error"] = error
        yield item
        if error is not None:
            return
        position = stop


def scan_binary(path: str) -> dict[str, Any] | None:
    """The CUDA code a shared object carries, or None when it has no fat binary section.

    The result: ``sass`` (cubin targets, e.g. sm_80, sm_90a), ``ptx`` (compute_XY), ``ptx_isa``
    (PTX ISA versions, e.g. 8.4), ``groups`` (distinct target sets, with how many containers
    have each), counts of containers, entries and compressed entries, and ``soname``; all of
    the .nv_fatbin section, the code the CUDA runtime loads (what cuobjdump lists). Containers
    of relocatable device code (``__nv_relfatbin``: NCCL keeps its -rdc objects there, for
    device linking) are only counted, in ``relocatable``.
    Raises NotElfError for a file that is not ELF, OSError when it cannot be read.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        file_size = os.fstat(fd).st_size
        elf = elf_sections(fd, file_size)
        sections = [s for s in elf["sections"] if s["name"] in FATBIN_SECTIONS]
        if not sections:
            return None
        groups: dict[tuple[str, ...], int] = {}
        isa: set[str] = set()
        containers = entries = compressed = other = skipped = relocatable = 0
        error = None
        for section in sections:
            if section["type"] == SHT_NOBITS or section["offset"] + section["size"] > file_size:
                error = f"section {section['name']} lies outside the file"
                continue
            for container in fatbin_containers(fd, section["offset"], section["size"]):
                error = container.get("error") or error
                if section["name"] != FATBIN_SECTION:
                    relocatable += bool(container["entries"])
                    continue
                skipped += container["skipped"]
                targets = set()
                for kind, arch, flags, major, minor, packed in container["entries"]:
                    entries += 1
                    compressed += packed
                    if kind in (KIND_PTX, KIND_ELF):
                        targets.add(target_name(kind, arch, flags))
                        if kind == KIND_PTX:
                            isa.add(f"{major}.{minor}")
                    else:
                        other += 1
                if container["entries"]:
                    containers += 1
                    key = tuple(sorted(targets, key=target_order))
                    groups[key] = groups.get(key, 0) + 1
        name = soname(fd, file_size, elf)
    finally:
        os.close(fd)
    every: set[str] = set()
    for key in groups:
        every.update(key)
    ordered = sorted(groups.items(), key=lambda item: (-item[1], item[0]))
    return {
        "path": path,
        "size": file_size,
        "soname": name,
        "sections": sorted({s["name"] for s in sections}),
        "containers": containers,
        "entries": entries,
        "compressed": compressed,
        "other": other,
        "skipped": skipped,
        "relocatable": relocatable,
        "sass": sorted((t for t in every if t.startswith("sm_")), key=target_order),
        "ptx": sorted((t for t in every if t.startswith("compute_")), key=target_order),
        "ptx_isa": sorted(isa, key=lambda v: tuple(int(p) for p in v.split("."))),
        "groups": [
            {
                "sass": [t for t in key if t.startswith("sm_")],
                "ptx": [t for t in key if t.startswith("compute_")],
                "containers": count,
            }
            for key, count in ordered
        ],
        "error": error,
    }


# --- what this process mapped ---------------------------------------------------------------
#
# /proc/self/maps names every file mapped into the process; the shared objects among them are
# what the dynamic loader (and dlopen, and Python's import of extensions) actually loaded, with
# symbolic links resolved. Each is recorded with its sha256, size, soname, version (as the
# library reports it where a getter exists: cudart, cuDNN, NCCL, cuBLAS; else from its file
# name), its role, and its owner: the distribution whose RECORD lists it, else the dpkg package
# whose file list has it, else the conda package; ``shadows`` names the files of installed
# distributions with the same name that a copy from elsewhere was loaded instead of.

DRIVER_LIBRARIES = ("libcuda.so", "libnvidia-", "libnvcuvid.so", "libcudadebugger.so")
CUDA_LIBRARIES = (
    "libcudart", "libcublas", "libcudnn", "libnccl", "libnvrtc", "libnvJitLink", "libnvjitlink",
    "libcufft", "libcurand", "libcusparse", "libcusolver", "libnvToolsExt", "libnvtx", "libcupti",
    "libnvshmem", "libcufile", "libnvperf", "libnpp", "libnvjpeg", "libcheckpoint",
    "libpcsamplingutil", "libnvblas", "libtorch_cuda", "libc10_cuda", "libcaffe2_nvrtc",
    "libcutensor", "libcudss", "libnvinfer", "libnvonnxparser",
)  # fmt: skip
ENV_VERSION_NAMES = (
    "CUDA", "CUDART", "CUDNN", "NCCL", "CUBLAS", "CUFFT", "CURAND", "CUSOLVER", "CUSPARSE",
    "NVJITLINK", "NVRTC", "NPP", "NVSHMEM", "CUTENSOR", "TRT", "TENSORRT",
)  # fmt: skip
SHARED_OBJECT = re.compile(r"\.so(\.[0-9][0-9.]*)?$")
FILE_VERSION = re.compile(r"\.so\.([0-9]+(?:\.[0-9]+)*)$")
HASH_CHUNK = 1024 * 1024
DPKG_INFO = "/var/lib/dpkg/info"
DPKG_STATUS = "/var/lib/dpkg/status"
ERROR_LIMIT = 500


def _text(value: object) -> str:
    return str(value).encode("utf-8", "replace").decode("utf-8", "replace")[:ERROR_LIMIT]


def mapped_objects(maps: str = "/proc/self/maps") -> list[dict[str, Any]]:
    """The shared objects mapped into this process: path, whether the file was deleted or
    replaced since (the kernel's `` (deleted)``), and its device and inode."""
    found: dict[str, dict[str, Any]] = {}
    with open(maps, encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            fields = line.rstrip("\n").split(None, 5)
            if len(fields) < 6 or fields[4] == "0" or not fields[5].startswith("/"):
                continue
            path = fields[5]
            deleted = path.endswith(" (deleted)")
            if deleted:
                path = path[: -len(" (deleted)")]
            if not SHARED_OBJECT.search(os.path.basename(path)):
                continue
            found.setdefault(
                path, {"path": path, "deleted": deleted, "inode": fields[3] + ":" + fields[4]}
            )
    return [found[path] for path in sorted(found)]


def _dist_info_name(directory: str) -> tuple[str, str]:
    """(PEP 503 name, version) from ``name-version.dist-info`` (the wheel spec's escaping)."""
    stem = directory[: -len(".dist-info")]
    name, _, version = stem.partition("-")
    return re.sub(r"[-_.]+", "-", name).lower(), version


def _record_rows(data: bytes) -> Iterator[tuple[str, str]]:
    """(path, sha256 in hex or "") of each shared object a RECORD lists, without parsing the
    rows of other files."""
    import base64
    import binascii

    for raw in data.splitlines():
        if b".so" not in raw:
            continue
        line = raw.decode("utf-8", "surrogateescape")
        if line.startswith('"'):
            import csv

            rows = list(csv.reader([line]))
            fields = rows[0] if rows else []
        else:
            fields = line.split(",")
        if not fields or not SHARED_OBJECT.search(fields[0]):
            continue
        digest = ""
        if len(fields) > 1 and fields[1].startswith("sha256="):
            encoded = fields[1][len("sha256=") :]
            try:
                digest = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).hex()
            except (ValueError, binascii.Error):
                digest = ""
        yield fields[0], digest


def record_index(locations: Iterable[str]) -> dict[str, dict[str, str]]:
    """Every shared object the RECORDs in ``locations`` (sys.path directories) list, by real
    path: {"name", "version", "record_path", "record_sha256"}. The first location wins, as
    for imports."""
    index: dict[str, dict[str, str]] = {}
    seen: set[str] = set()
    for location in locations:
        if not location or not os.path.isdir(location):
            continue
        base = os.path.realpath(location)
        if base in seen:
            continue
        seen.add(base)
        try:
            names = sorted(n for n in os.listdir(base) if n.endswith(".dist-info"))
        except OSError:
            continue
        for directory in names:
            try:
                with open(os.path.join(base, directory, "RECORD"), "rb") as handle:
                    data = handle.read()
            except OSError:
                continue
            name, version = _dist_info_name(directory)
            for relative, digest in _record_rows(data):
                full = os.path.normpath(os.path.join(base, relative))
                index.setdefault(
                    full,
                    {
                        "name": name,
                        "version": version,
                        "record_path": relative,
                        "record_sha256": digest,
                    },
                )
    return index


def _usrmerge_aliases(path: str) -> list[str]:
    """The names dpkg may list for a file that lies under /usr (merged /usr: /lib -> /usr/lib)."""
    aliases = [path]
    for merged, legacy in (
        ("/usr/lib/", "/lib/"),
        ("/usr/lib64/", "/lib64/"),
        ("/usr/bin/", "/bin/"),
    ):
        if path.startswith(merged):
            aliases.append(legacy + path[len(merged) :])
        elif path.startswith(legacy):
            aliases.append(merged + path[len(legacy) :])
    return aliases


def dpkg_owners(
    paths: Iterable[str], info: str = DPKG_INFO, status: str = DPKG_STATUS
) -> dict[str, dict[str, str]]:
    """The dpkg package (name, version) whose file list has each path, where one has."""
    wanted: dict[str, str] = {}
    for path in paths:
        for alias in _usrmerge_aliases(path):
            wanted[alias] = path
    if not wanted or not os.path.isdir(info):
        return {}
    owners: dict[str, str] = {}
    try:
        lists = sorted(n for n in os.listdir(info) if n.endswith(".list"))
    except OSError:
        return {}
    remaining = set(wanted.values())
    for name in lists:
        try:
            with open(
                os.path.join(info, name), encoding="utf-8", errors="surrogateescape"
            ) as handle:
                for line in handle:
                    listed = wanted.get(line.rstrip("\n"))
                    if listed is not None and listed not in owners:
                        owners[listed] = name[: -len(".list")].split(":", 1)[0]
                        remaining.discard(listed)
        except OSError:
            continue
        if not remaining:
            break
    versions = _dpkg_versions(set(owners.values()), status)
    return {
        path: {"name": package, "version": versions.get(package, "")}
        for path, package in owners.items()
    }


def _dpkg_versions(packages: set[str], status: str) -> dict[str, str]:
    versions: dict[str, str] = {}
    if not packages:
        return versions
    current = None
    try:
        with open(status, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("Package: "):
                    current = line[len("Package: ") :].strip()
                elif line.startswith("Version: ") and current in packages:
                    versions.setdefault(current, line[len("Version: ") :].strip())
    except OSError:
        pass
    return versions


def conda_owners(paths: Iterable[str], prefix: str) -> dict[str, dict[str, str]]:
    """The conda package whose conda-meta record lists each path, where one does."""
    import json

    meta = os.path.join(prefix, "conda-meta")
    wanted = set(paths)
    owners: dict[str, dict[str, str]] = {}
    if not wanted or not os.path.isdir(meta):
        return owners
    base = os.path.realpath(prefix)
    for name in sorted(os.listdir(meta)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(meta, name), encoding="utf-8") as handle:
                package = json.load(handle)
            files = package.get("files") or []
            for relative in files:
                full = os.path.normpath(os.path.join(base, str(relative)))
                if full in wanted and full not in owners:
                    owners[full] = {
                        "name": str(package.get("name", "")),
                        "version": str(package.get("version", "")),
                    }
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    return owners


def sha256_file(path: str) -> tuple[str | None, int | None, str | None]:
    """(sha256, size, error) of a file, read in chunks: hashlib releases the GIL for each
    chunk, so several threads hash several files at once."""
    import hashlib

    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as handle:
            while True:
                chunk = handle.read(HASH_CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
    except OSError as error:
        return None, None, _text(f"{type(error).__name__}: {error}")
    return digest.hexdigest(), size, None


def _int_getter(library: Any, function: str) -> int | None:
    import ctypes

    value = ctypes.c_int()
    if getattr(library, function)(ctypes.byref(value)) != 0:
        return None
    return int(value.value)


def _property_getter(library: Any, function: str) -> str | None:
    import ctypes

    parts = []
    for kind in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
        value = ctypes.c_int()
        if getattr(library, function)(kind, ctypes.byref(value)) != 0:
            return None
        parts.append(value.value)
    return ".".join(str(part) for part in parts)


def _coded(number: int | None, wide: bool) -> str | None:
    """91900 -> 9.19.0 (cuDNN 9, NCCL >= 2.9); 8907 -> 8.9.7 (cuDNN 8); cudart 12040 -> 12.4."""
    if number is None:
        return None
    if not wide:
        return f"{number // 1000}.{(number % 1000) // 10}"
    if number >= 10000:
        return f"{number // 10000}.{(number % 10000) // 100}.{number % 100}"
    return f"{number // 1000}.{(number % 1000) // 100}.{number % 100}"


def runtime_version(path: str) -> str | None:
    """The version a mapped CUDA library reports about itself (no CUDA context needed):
    cudaRuntimeGetVersion, cudnnGetVersion, ncclGetVersion, cublas(Lt)GetProperty."""
    name = os.path.basename(path)
    if not name.startswith(("libcudart.so", "libcudnn.so", "libnccl.so", "libcublas")):
        return None
    import ctypes

    try:
        library = ctypes.CDLL(path)
        if name.startswith("libcudart.so"):
            return _coded(_int_getter(library, "cudaRuntimeGetVersion"), False)
        if name.startswith("libcudnn.so"):
            return _coded(_cudnn(library), True)
        if name.startswith("libnccl.so"):
            return _coded(_int_getter(library, "ncclGetVersion"), True)
        if name.startswith("libcublasLt.so"):
            return _property_getter(library, "cublasLtGetProperty")
        if name.startswith("libcublas.so"):
            return _property_getter(library, "cublasGetProperty")
    except (OSError, AttributeError, ValueError):
        return None
    return None


def _cudnn(library: Any) -> int | None:
    import ctypes

    library.cudnnGetVersion.restype = ctypes.c_size_t
    return int(library.cudnnGetVersion())


def library_role(
    path: str, owner: Mapping[str, Any] | None, library_dirs: Sequence[str]
) -> str | None:
    """driver, cuda, extension or library-path; None: a system library lockd does not record."""
    name = os.path.basename(path)
    if name.startswith(DRIVER_LIBRARIES):
        return "driver"
    if (
        name.startswith(CUDA_LIBRARIES)
        or path.startswith("/usr/local/cuda")
        or (
            owner is not None
            and owner.get("kind") == "distribution"
            and str(owner.get("name", "")).startswith("nvidia-")
        )
    ):
        return "cuda"
    if (
        "/site-packages/" in path
        or "/dist-packages/" in path
        or (owner is not None and owner.get("kind") == "distribution")
    ):
        return "extension"
    if os.path.dirname(path) in library_dirs:
        return "library-path"
    return None


def library_dirs(environ: Mapping[str, str]) -> list[str]:
    """The real directories of LD_LIBRARY_PATH and of the LD_PRELOAD libraries."""
    dirs = [d for d in environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    dirs += [
        os.path.dirname(p) for p in re.split(r"[:\s]+", environ.get("LD_PRELOAD", "")) if "/" in p
    ]
    return sorted({os.path.realpath(d) for d in dirs})


def env_versions(environ: Mapping[str, str]) -> dict[str, str]:
    """``*_VERSION`` variables that name a CUDA library's version (NCCL_VERSION, ...)."""
    return {
        name + "_VERSION": _text(environ[name + "_VERSION"])
        for name in ENV_VERSION_NAMES
        if environ.get(name + "_VERSION")
    }


def _pool(work: Sequence[Any], function: Any, threads: int) -> list[Any]:
    if threads <= 1 or len(work) <= 1:
        return [function(item) for item in work]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lockd-hash") as pool:
        return list(pool.map(function, work))


def hash_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def owners_of(
    paths: Sequence[str], index: Mapping[str, Mapping[str, str]], prefix: str | None
) -> dict[str, dict[str, Any]]:
    """Who installed each path: a distribution's RECORD, else (with ``prefix``, the conda
    prefix to look in) dpkg, else conda."""
    owners: dict[str, dict[str, Any]] = {}
    for path in paths:
        entry = index.get(path)
        if entry is not None:
            owners[path] = {
                "kind": "distribution",
                "name": entry["name"],
                "version": entry["version"],
                "path": entry["record_path"],
                "record_sha256": entry.get("record_sha256") or None,
            }
    unowned = [p for p in paths if p not in owners]
    if prefix is None:
        return owners
    for path, found in dpkg_owners(unowned).items():
        owners[path] = {"kind": "dpkg", "name": found["name"], "version": found["version"] or None}
    unowned = [p for p in unowned if p not in owners]
    if unowned:
        for path, found in conda_owners(unowned, prefix).items():
            owners[path] = {
                "kind": "conda",
                "name": found["name"],
                "version": found["version"] or None,
            }
    return owners


def hash_files(
    paths: Sequence[str], threads: int
) -> dict[str, tuple[str | None, int | None, str | None]]:
    """sha256_file of each path, the largest first, in ``threads`` threads."""
    order = sorted(set(paths), key=lambda p: -_size(p))
    results = _pool(order, sha256_file, threads)
    return {path: results[rank] for rank, path in enumerate(order)}


def _version(path: str, deleted: bool) -> tuple[str | None, str | None]:
    version = None if deleted else runtime_version(path)
    if version is not None:
        return version, "runtime"
    match = FILE_VERSION.search(os.path.basename(path))
    if match:
        return match.group(1), "file"
    return None, None


def loaded_libraries(
    scope: str,
    locations: Sequence[str],
    environ: Mapping[str, str] | None = None,
    prefix: str | None = None,
    maps: str = "/proc/self/maps",
    index: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """The record of the CUDA stack and Python extensions this process mapped (see above):
    ``scope`` says when (after ``import torch`` in the probe, after the GPU suite)."""
    started = time.perf_counter()
    environ = os.environ if environ is None else environ
    if index is None:
        index = record_index(locations)
    by_name: dict[str, list[str]] = {}
    for full in index:
        by_name.setdefault(os.path.basename(full), []).append(full)
    dirs = library_dirs(environ)
    objects = mapped_objects(maps)
    # Owners from the RECORDs first: they decide which objects are recorded. dpkg and conda are
    # asked only about those (not about libc and the other system libraries lockd skips).
    owners = owners_of([o["path"] for o in objects], index, None)
    chosen: list[dict[str, Any]] = []
    for item in objects:
        path = item["path"]
        owner = owners.get(path)
        name = os.path.basename(path)
        # Only shared libraries (lib*.so*) shadow: Python extension modules of the same file name
        # in two packages (a _json in the standard library and one in pyarrow) are different
        # modules, not two copies of one library.
        same_name = by_name.get(name, []) if name.startswith("lib") else []
        shadows = [] if owner is not None else [p for p in same_name if p != path]
        role = library_role(path, owner, dirs) or ("library-path" if shadows else None)
        if role is not None:
            chosen.append(dict(item, owner=owner, shadows=shadows, role=role))
    unowned = [c["path"] for c in chosen if c["owner"] is None]
    if unowned:
        found = owners_of(unowned, {}, prefix or sys.prefix)
        for entry in chosen:
            if entry["owner"] is None:
                entry["owner"] = found.get(entry["path"])
    threads = hash_threads()
    live = [c["path"] for c in chosen if not c["deleted"]]
    digests = hash_files(live, threads)
    libraries = []
    for entry in chosen:
        path, deleted, shadows = entry["path"], entry["deleted"], entry["shadows"]
        digest, size, error = digests.get(path, (None, None, None))
        version, source = _version(path, deleted)
        library: dict[str, Any] = {
            "path": _text(path),
            "role": entry["role"],
            "size": size,
            "sha256": digest,
            "soname": None if deleted else _soname(path),
            "version": version,
            "version_source": source,
            "owner": entry["owner"],
            "shadows": [
                f"{index[p]['record_path']} ({index[p]['name']} {index[p]['version']})"
                for p in shadows
            ][:16],
            "deleted": deleted,
        }
        if error is not None:
            library["error"] = error
        libraries.append(library)
    return {
        "scope": scope,
        "libraries": libraries,
        "system": len(objects) - len(chosen),
        "bytes": sum(d[1] or 0 for d in digests.values()),
        "threads": threads,
        "env_versions": env_versions(environ),
        "seconds": round(time.perf_counter() - started, 6),
    }


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _soname(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        return soname(fd, size, elf_sections(fd, size))
    except (OSError, NotElfError, struct.error):
        return None
    finally:
        os.close(fd)


def extension_archs(
    index: Mapping[str, Mapping[str, str]], extra: Iterable[str] = ()
) -> dict[str, Any]:
    """The CUDA code of every shared object the installed distributions' RECORDs list (and of
    ``extra`` files, the libraries the process mapped): only files that carry a fat binary."""
    started = time.perf_counter()
    paths = sorted(set(index) | set(extra))

    def scan(path: str) -> tuple[str, dict[str, Any] | None, str | None]:
        try:
            return path, scan_binary(path), None
        except (OSError, NotElfError, struct.error) as error:
            return path, None, _text(f"{type(error).__name__}: {error}")

    binaries = []
    errors = 0
    for path, found, error in _pool(paths, scan, hash_threads()):
        if error is not None:
            errors += 1 if os.path.exists(path) else 0
            continue
        if found is None:
            continue
        owner = index.get(path)
        found["path"] = _text(path)
        found["name"] = _text(owner["record_path"] if owner else os.path.basename(path))
        found["distribution"] = owner["name"] if owner else None
        binaries.append(found)
    return {
        "files": len(paths),
        "binaries": binaries,
        "errors": errors,
        "seconds": round(time.perf_counter() - started, 6),
    }


def main(argv: Sequence[str]) -> int:
    import json

    status = 0
    for path in argv:
        try:
            found = scan_binary(path)
        except (OSError, NotElfError) as error:
            sys.stderr.write(f"{path}: {error}\n")
            status = 1
            continue
        sys.stdout.write(json.dumps({"path": path, "fatbin": found}, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
