"""lockd's environment probe: what one Python environment looks like from inside.

This file runs INSIDE the target, streamed as ``python3 -c <source>`` or ``python3 - < file``
by whatever Python >= 3.8 the target has, with nothing of lockd installed there. So it uses
the standard library only, imports nothing of lockd, never shells out, and prints exactly
one compact JSON document (sort_keys) to stdout: a ``ProbeReport`` (lockd/model.py).
On an unexpected error it prints a traceback to stderr and exits 1.

lockd treats the output as untrusted: the host caps its size, times it out and validates it.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs an import; mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

if __name__ == "__main__":
    # ``-c`` and ``-`` put the working directory first on sys.path: a json.py or csv.py
    # there would shadow the standard library imported below. The report drops it too.
    sys.path[:] = [entry for entry in sys.path if entry]

import csv  # noqa: E402
import hashlib  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

PROBE_VERSION = 1

ENV_PREFIXES = ("CUDA_", "NCCL_", "NVIDIA_", "PYTORCH_", "TORCH_", "CUBLAS_")
ENV_NAMES = ("LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "PYTHONHOME")
ENV_EXCLUDED_SUFFIX = "_VISIBLE_DEVICES"  # which GPUs a run sees is scheduling, not environment
OS_RELEASE_FILES = ("/etc/os-release", "/usr/lib/os-release")
ERROR_LIMIT = 1000

_NORMALISE = re.compile(r"[-_.]+")


def normalise_name(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return _NORMALISE.sub("-", name).lower()


def text(value: object) -> str:
    """A str that encodes to UTF-8: lone surrogates (undecodable bytes) become U+FFFD."""
    value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:  # back to the bytes the OS gave, so each bad byte becomes one U+FFFD
            data = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            data = value.encode("utf-8", "surrogatepass")
        value = data.decode("utf-8", "replace")
    return value


def optional_text(value: object) -> str | None:
    return None if value is None else text(value)


# --- python ---------------------------------------------------------------------------------


def python_info() -> dict[str, Any]:
    return {
        "version": platform.python_version(),
        "implementation": sys.implementation.name.lower(),
        "executable": text(sys.executable or ""),
        "prefix": text(sys.prefix),
        "base_prefix": text(getattr(sys, "base_prefix", sys.prefix)),
        "path": [text(entry) for entry in sys.path if entry],
        "platform": sys.platform,
    }


# --- distributions --------------------------------------------------------------------------
#
# Directories on sys.path are scanned directly, the way importlib.metadata's path finder does
# (``*.dist-info`` and ``*.egg-info`` entries, in sys.path order): importing importlib.metadata
# alone costs 80-130 ms, more than the whole probe may take. Other entries (zip archives) go
# through importlib.metadata.


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _headers(metadata: str) -> dict[str, str]:
    """The first value of each header of a METADATA/PKG-INFO file (lower-case names)."""
    fields: dict[str, str] = {}
    head = metadata.split("\n\n", 1)[0]  # the headers end at the first blank line
    for line in head.splitlines():
        if not line.strip():
            break
        if line[0] in " \t":  # a continuation line of a folded header
            continue
        key, separator, value = line.partition(":")
        if separator:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _count_rows(data: bytes) -> int:
    """RECORD's rows: its CSV records, not counting blank lines."""
    if b'"' not in data:  # no quoted field can span lines: one record a non-blank line
        return sum(1 for line in data.splitlines() if line.strip())
    decoded = data.decode("utf-8", "replace")
    try:
        return sum(1 for row in csv.reader(io.StringIO(decoded, newline="")) if row)
    except csv.Error:  # e.g. a NUL byte on Python < 3.11: count the lines instead
        return sum(1 for line in decoded.splitlines() if line.strip())


def distribution_record(
    metadata: str | None,
    record: bytes | None,
    installer: str | None,
    location: str,
) -> dict[str, Any] | None:
    """One distribution's entry, or None when its metadata is broken (no Name or Version)."""
    if metadata is None:
        return None
    headers = _headers(metadata)
    name = headers.get("name")
    version = headers.get("version")
    if not name or not version:
        return None
    return {
        "name": text(normalise_name(name)),
        "version": text(version),
        "installer": None if installer is None else text(installer.strip()),
        "location": text(os.path.abspath(location)),
        "record_sha256": None if record is None else hashlib.sha256(record).hexdigest(),
        "files": 0 if record is None else _count_rows(record),
    }


def _from_metadata_dir(location: str, entry: os.DirEntry[str]) -> dict[str, Any] | None:
    if not entry.is_dir():  # a single-file .egg-info (distutils): the file is PKG-INFO
        data = _read(entry.path)
        return distribution_record(None if data is None else _decode(data), None, None, location)
    data = _read(os.path.join(entry.path, "METADATA")) or _read(
        os.path.join(entry.path, "PKG-INFO")
    )
    installer = _read(os.path.join(entry.path, "INSTALLER"))
    return distribution_record(
        None if data is None else _decode(data),
        _read(os.path.join(entry.path, "RECORD")),
        None if installer is None else _decode(installer),
        location,
    )


def _scan_directory(location: str) -> list[dict[str, Any]]:
    try:
        with os.scandir(location) as scan:
            entries = [
                entry for entry in scan if entry.name.lower().endswith((".dist-info", ".egg-info"))
            ]
    except OSError:
        return []
    found = []
    for entry in sorted(entries, key=lambda entry: entry.name):
        info = _from_metadata_dir(location, entry)
        if info is not None:
            found.append(info)
    return found


def _scan_other(location: str) -> list[dict[str, Any]]:
    """Distributions in a sys.path entry that is not a directory (a zip archive)."""
    import importlib.metadata

    found = []
    for dist in importlib.metadata.distributions(path=[location]):
        try:
            metadata = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
            record = dist.read_text("RECORD")
            installer = dist.read_text("INSTALLER")
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        info = distribution_record(
            metadata,
            None if record is None else record.encode("utf-8", "surrogateescape"),
            installer,
            location,
        )
        if info is not None:
            found.append(info)
    return found


def distributions() -> list[dict[str, Any]]:
    """Installed distributions on sys.path, sorted by name; where a name repeats (one
    shadows another further down sys.path), the first: the one Python imports."""
    found: dict[str, dict[str, Any]] = {}
    for location in sys.path:
        if not location:
            continue
        if os.path.isdir(location):
            infos = _scan_directory(location)
        elif os.path.exists(location):
            infos = _scan_other(location)
        else:
            continue
        for info in infos:
            found.setdefault(info["name"], info)
    return [found[name] for name in sorted(found)]


# --- operating system -----------------------------------------------------------------------


def _unquote(value: str) -> str:
    value = value.strip()
    quote = value[:1]
    if len(value) >= 2 and quote in ("'", '"') and value[-1] == quote:
        value = value[1:-1]
        if quote == '"':  # shell double quotes: backslash escapes the next character
            value = re.sub(r"\\(.)", r"\1", value)
    return value


def os_release() -> dict[str, str]:
    for path in OS_RELEASE_FILES:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                content = handle.read(65536)
        except OSError:
            continue
        fields = {}
        for line in content.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            fields[key.strip()] = _unquote(value)
        return fields
    return {}


def glibc_version() -> str | None:
    try:
        confstr = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, OSError, ValueError):
        confstr = None
    if confstr:
        library, _, version = confstr.partition(" ")
        if library == "glibc" and version:
            return version
    try:
        library, version = platform.libc_ver()
    except (OSError, ValueError):
        return None
    if library == "glibc" and version:
        return version
    return None


def os_info() -> dict[str, Any]:
    release = os_release()
    return {
        "id": optional_text(release.get("ID")),
        "version_id": optional_text(release.get("VERSION_ID")),
        "pretty_name": optional_text(release.get("PRETTY_NAME")),
        "glibc": glibc_version(),
        "machine": text(platform.machine()),
    }


# --- environment variables ------------------------------------------------------------------


def selected_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    selected = {}
    for name, value in environ.items():
        if name.endswith(ENV_EXCLUDED_SUFFIX):
            continue
        if name in ENV_NAMES or name.startswith(ENV_PREFIXES):
            selected[text(name)] = text(value)
    return selected


# --- torch ----------------------------------------------------------------------------------


def dotted_version(code: Any) -> str:
    """cuDNN/NCCL integer version codes: 91900 -> 9.19.0 (>= 10000: major*10000 + minor*100
    + patch, cuDNN 9 and NCCL >= 2.9), 8902 -> 8.9.2 (major*1000 + minor*100 + patch)."""
    if isinstance(code, (tuple, list)):
        return ".".join(str(part) for part in code)
    number = int(code)
    if number >= 10000:
        return "%d.%d.%d" % (number // 10000, (number % 10000) // 100, number % 100)
    return "%d.%d.%d" % (number // 1000, (number % 1000) // 100, number % 100)


def _guarded(read: Callable[[], object]) -> str | None:
    try:
        value = read()
    except Exception:
        return None
    return None if value is None else text(value)


def _exception_text(error: BaseException) -> str:
    message = "%s: %s" % (type(error).__name__, error)
    return text(message)[:ERROR_LIMIT]


def torch_info(installed_version: str) -> dict[str, Any]:
    """What torch says about itself; only called when a torch distribution is installed."""
    try:
        torch = importlib.import_module("torch")
    except (Exception, SystemExit) as error:
        return {"version": text(installed_version), "error": _exception_text(error)}
    return {
        "version": _guarded(lambda: torch.__version__) or text(installed_version),
        "git_version": _guarded(lambda: torch.version.git_version),
        "cuda": _guarded(lambda: torch.version.cuda),
        "cudnn": _guarded(lambda: _optional_dotted(torch.backends.cudnn.version())),
        "nccl": _guarded(lambda: _optional_dotted(torch.cuda.nccl.version())),
        "arch_flags": _guarded(lambda: torch._C._cuda_getArchFlags()),
        "cublas": _guarded(cublas_version),
    }


def _optional_dotted(code: Any) -> str | None:
    return None if code is None else dotted_version(code)


# --- the CUDA stack as loaded, the driver, the GPUs -------------------------------------------
#
# torch has no getter for cuBLAS: its version comes from the libcublas this process mapped
# (cublasGetProperty needs no CUDA context). The driver and the GPUs come from NVML through
# ctypes (the library nvidia-ml-py's pynvml wraps, so that package is not needed), else the
# driver from /proc/driver/nvidia/version. The probe never shells out, so no nvidia-smi: it
# reads the same NVML. A GPU's UUID is recorded only as its sha256.

NVML_SUCCESS = 0
DRIVER_PROC = "/proc/driver/nvidia/version"
_DRIVER_VERSION = re.compile(r"Kernel Module(?: for [A-Za-z0-9_]+)?\s+([0-9]+(?:\.[0-9]+)+)")


def mapped_library(stem: str, maps: str = "/proc/self/maps") -> str | None:
    """The path of a shared library this process mapped whose file name starts with stem."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split(None, 5)
                if len(fields) == 6:
                    path = fields[5].strip()
                    name = os.path.basename(path)
                    if name.startswith(stem) and ".so" in name:
                        return path
    except OSError:
        return None
    return None


def cublas_version() -> str | None:
    path = mapped_library("libcublas.so")
    if path is None:
        return None
    import ctypes

    library = ctypes.CDLL(path)
    parts = []
    for kind in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
        value = ctypes.c_int()
        if library.cublasGetProperty(kind, ctypes.byref(value)) != 0:
            return None
        parts.append(value.value)
    return "%d.%d.%d" % tuple(parts)


def uuid_digest(uuid: object) -> str | None:
    """sha256 of a GPU UUID as NVML prints it (GPU-xxxxxxxx-...), whatever the source."""
    value = str(uuid or "").strip().lower()
    if not value:
        return None
    if not value.startswith("gpu-") and not value.startswith("mig-"):
        value = "gpu-" + value
    return hashlib.sha256(value.encode("ascii", "replace")).hexdigest()


def torch_gpus(torch: Any) -> list[dict[str, Any]]:
    """The GPUs torch sees (CUDA_VISIBLE_DEVICES applies), with SM counts."""
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(int(torch.cuda.device_count())):
        props = torch.cuda.get_device_properties(index)
        gpus.append(
            {
                "index": index,
                "name": text(props.name),
                "compute_capability": "%d.%d" % (props.major, props.minor),
                "sm_count": int(props.multi_processor_count),
                "memory_bytes": int(props.total_memory),
                "uuid_sha256": uuid_digest(getattr(props, "uuid", None)),
            }
        )
    return gpus


def _nvml_text(call: Callable[..., int], *args: Any, size: int = 96) -> str | None:
    """An NVML getter that fills a char buffer: call(*args, buffer, size)."""
    import ctypes

    buffer = ctypes.create_string_buffer(size)
    if call(*args, buffer, size) != NVML_SUCCESS:
        return None
    return text(buffer.value.decode("utf-8", "replace"))


def nvml() -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The driver and every GPU the driver shows, through NVML; (None, []) without NVML."""
    import ctypes

    try:
        library = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None, []
    if library.nvmlInit_v2() != NVML_SUCCESS:
        return None, []
    try:
        version = _nvml_text(library.nvmlSystemGetDriverVersion, size=80)
        if version is None:
            return None, []
        driver: dict[str, Any] = {"version": version, "cuda": None, "source": "nvml"}
        code = ctypes.c_int()
        if library.nvmlSystemGetCudaDriverVersion(ctypes.byref(code)) == NVML_SUCCESS:
            driver["cuda"] = "%d.%d" % (code.value // 1000, (code.value % 1000) // 10)
        count = ctypes.c_uint()
        if library.nvmlDeviceGetCount_v2(ctypes.byref(count)) != NVML_SUCCESS:
            return driver, []
        gpus = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            if library.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
                continue
            major, minor = ctypes.c_int(), ctypes.c_int()
            if (
                library.nvmlDeviceGetCudaComputeCapability(
                    handle, ctypes.byref(major), ctypes.byref(minor)
                )
                != NVML_SUCCESS
            ):
                continue
            memory = (ctypes.c_ulonglong * 3)()  # nvmlMemory_t: total, free, used
            has_memory = library.nvmlDeviceGetMemoryInfo(handle, memory) == NVML_SUCCESS
            name = _nvml_text(library.nvmlDeviceGetName, handle)
            uuid = _nvml_text(library.nvmlDeviceGetUUID, handle)
            gpus.append(
                {
                    "index": index,
                    "name": name or "unknown",
                    "compute_capability": "%d.%d" % (major.value, minor.value),
                    "sm_count": None,
                    "memory_bytes": int(memory[0]) if has_memory else None,
                    "uuid_sha256": uuid_digest(uuid),
                }
            )
        return driver, gpus
    finally:
        library.nvmlShutdown()


def proc_driver(path: str = DRIVER_PROC) -> dict[str, Any] | None:
    """The kernel module's version from /proc (no CUDA version there)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            content = handle.read(4096)
    except OSError:
        return None
    match = _DRIVER_VERSION.search(content)
    if match is None:
        return None
    return {"version": match.group(1), "cuda": None, "source": "proc"}


def driver_and_gpus(torch: Any) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    try:
        driver, gpus = nvml()
    except Exception:  # a broken NVML must not cost the whole report
        driver, gpus = None, []
    if driver is None:
        driver = proc_driver()
    if torch is not None:
        seen = _guarded_list(lambda: torch_gpus(torch))
        if seen:
            gpus = seen
    return driver, gpus


def _guarded_list(read: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    try:
        return read()
    except Exception:
        return []


# --- pip's installation report (optional) ---------------------------------------------------
#
# An image built with ``pip install --report /etc/lockd/pip-report.json`` kept the sha256 of
# every archive pip installed; lockd checks them against its lock's allowed hashes.

PIP_REPORT = "/etc/lockd/pip-report.json"
PIP_REPORT_LIMIT = 64 * 1024 * 1024


def _archive(item: Any) -> dict[str, Any] | None:
    metadata = item.get("metadata") if isinstance(item, dict) else None
    if not isinstance(metadata, dict) or not metadata.get("name") or not metadata.get("version"):
        return None
    info = item.get("download_info")
    archive = info.get("archive_info") if isinstance(info, dict) else None
    digest = None
    if isinstance(archive, dict):
        hashes = archive.get("hashes")
        digest = hashes.get("sha256") if isinstance(hashes, dict) else None
        legacy = archive.get("hash")
        if digest is None and isinstance(legacy, str) and legacy.startswith("sha256="):
            digest = legacy[len("sha256=") :]
    if not (isinstance(digest, str) and re.match(r"^[0-9a-f]{64}$", digest)):
        digest = None
    return {
        "name": text(normalise_name(str(metadata["name"]))),
        "version": text(metadata["version"]),
        "sha256": digest,
    }


def pip_report(path: str | None = None) -> dict[str, Any] | None:
    """The archives a kept pip installation report lists ($LOCKD_PIP_REPORT overrides the
    path), None when there is no report; a report that cannot be read gives its error."""
    path = path or os.environ.get("LOCKD_PIP_REPORT") or PIP_REPORT
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as handle:
            data = handle.read(PIP_REPORT_LIMIT + 1)
        if len(data) > PIP_REPORT_LIMIT:
            raise ValueError("larger than %d bytes" % PIP_REPORT_LIMIT)
        items = json.loads(data.decode("utf-8")).get("install")
        if not isinstance(items, list):
            raise ValueError("no 'install' list")
    except Exception as error:
        return {"path": text(path), "archives": [], "error": _exception_text(error)}
    archives = [a for a in (_archive(item) for item in items) if a is not None]
    return {"path": text(path), "archives": sorted(archives, key=lambda a: a["name"])}


# --- the PyTorch family's import smoke test (``--family-imports``) ----------------------------
#
# Off by default (importing torch and its family takes seconds). For ``--deep`` lockd runs the
# probe with ``--with-family-imports``: the report gains a ``family_imports`` document, made
# after everything else (the record of loaded libraries stays that of ``import torch`` alone)
# and reusing the probe's import of torch; ``--family-imports`` alone prints only the document.
# Each installed family member is imported and one of its compiled ops run on a tiny tensor; a
# failure reports the exception with its causes (a compiled extension built for another torch
# fails to load) and the warnings raised on the way. The document is {"python": ...,
# "results": [...]} (lockd/model.py: FamilyImports).

FAMILY_IMPORTS_FLAG = "--family-imports"
WITH_FAMILY_IMPORTS_FLAG = "--with-family-imports"  # the report, then the smoke test after it


def _touch_torch(module: Any) -> None:
    module.ones(2).add(1).sum().item()


def _touch_torchvision(module: Any) -> None:
    torch = importlib.import_module("torch")

    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    module.ops.nms(boxes, torch.tensor([1.0, 0.5]), 0.5)


def _touch_torchaudio(module: Any) -> None:
    torch = importlib.import_module("torch")

    extension = sys.modules.get("torchaudio._extension")
    if extension is not None and getattr(extension, "_IS_TORCHAUDIO_EXT_AVAILABLE", True) is False:
        raise RuntimeError("torchaudio's compiled extension (libtorchaudio) is not available")
    functional = importlib.import_module("torchaudio.functional")
    one = torch.tensor([1.0, 0.0])
    functional.lfilter(torch.zeros(8), one, one)


def _touch_torchtext(module: Any) -> None:
    import collections

    importlib.import_module("torchtext.vocab").vocab(collections.OrderedDict([("a", 1)]))


def _touch_xformers(module: Any) -> None:
    importlib.import_module("xformers.ops")
    if getattr(module, "_has_cpp_library", True) is False:
        raise RuntimeError("xFormers' C++/CUDA extensions did not load")


def _touch_import(name: str) -> Callable[[Any], None]:
    def touch(module: Any) -> None:
        importlib.import_module(name)

    return touch


# (distribution, module to import, the compiled op touched, how)
FAMILY_IMPORTS = (
    ("torch", "torch", "torch.add", _touch_torch),
    ("torchvision", "torchvision", "torchvision.ops.nms", _touch_torchvision),
    ("torchaudio", "torchaudio", "torchaudio.functional.lfilter", _touch_torchaudio),
    ("triton", "triton", "triton._C.libtriton", _touch_import("triton._C.libtriton")),
    ("torchtext", "torchtext", "torchtext.vocab.vocab", _touch_torchtext),
    ("torchdata", "torchdata", None, None),
    ("xformers", "xformers", "xformers.ops", _touch_xformers),
    ("flash-attn", "flash_attn", "flash_attn_2_cuda", _touch_import("flash_attn_2_cuda")),
)


def _error_chain(error: BaseException, warned: list[Any]) -> str:
    """The exception and its causes, then the warnings raised on the way: the exact reason."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(parts) < 5:
        seen.add(id(current))
        parts.append("%s: %s" % (type(current).__name__, current))
        current = current.__cause__ or current.__context__
    message = parts[0] + "".join(" (caused by %s)" % part for part in parts[1:])
    notes = ["%s: %s" % (w.category.__name__, w.message) for w in warned[:3]]
    if notes:
        message += "; warnings: " + " | ".join(notes)
    return text(message)[: 2 * ERROR_LIMIT]


def family_import(
    name: str, version: str, module_name: str, op: str | None, touch: Any
) -> dict[str, Any]:
    """Import one family member and run its op; the outcome (never raises)."""
    import warnings

    sys.stderr.write("lockd: importing %s %s\n" % (module_name, version))
    sys.stderr.flush()
    result: dict[str, Any] = {"name": name, "version": text(version), "module": module_name}
    if op is not None:
        result["op"] = op
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        try:
            module = importlib.import_module(module_name)
            if touch is not None:
                touch(module)
        except (Exception, SystemExit) as error:
            result["ok"] = False
            result["error"] = _error_chain(error, list(warned))
            return result
    result["ok"] = True
    return result


def family_imports(dists: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The import smoke test over the installed family members (``dists``, else found),
    torch first."""
    import faulthandler

    faulthandler.enable()  # a crash in a compiled extension still says where, on stderr
    installed = {d["name"]: d["version"] for d in (distributions() if dists is None else dists)}
    results = [
        family_import(name, installed[name], module, op, touch)
        for name, module, op, touch in FAMILY_IMPORTS
        if name in installed
    ]
    return {"python": text(sys.executable or ""), "results": results}


# --- what the process loaded, and the CUDA code of the installed extensions -----------------
#
# After ``import torch``: every shared object of the CUDA stack and the Python extensions that
# this process mapped (/proc/self/maps), with its sha256, size, soname, version and owner, and
# the GPU architectures (SASS and PTX) that each installed shared object carries in its CUDA
# fat binaries. lockd/probe/fatbin.py does the reading; lockd embeds its source below when it
# streams
# this file (lockd.judgement.libraries.embed_reader), and from a checkout it is read from beside
# this package. Without torch installed neither runs: the probe then maps only the interpreter's own
# libraries, and stays as fast as it was. LOCKD_PROBE_LIBRARIES=0 turns both off (to measure).

FATBIN_SOURCE = None  # lockd/probe/fatbin.py's source, embedded by lockd when it streams this file
LIBRARIES_ENV = "LOCKD_PROBE_LIBRARIES"


def fatbin_reader() -> dict[str, Any] | None:
    """lockd/probe/fatbin.py's functions, from the embedded source or the file beside this one."""
    source = FATBIN_SOURCE
    if source is None:
        here = globals().get("__file__")
        data = None
        if here:
            data = _read(os.path.join(os.path.dirname(os.path.abspath(here)), "fatbin.py"))
        if data is None:
            return None
        source = data.decode("utf-8")
    namespace: dict[str, Any] = {"__name__": "lockd_fatbin"}
    exec(compile(source, "lockd/probe/fatbin.py", "exec"), namespace)
    return namespace


def loaded_evidence() -> dict[str, Any]:
    """``libraries`` (the mapped record) and ``extensions`` (CUDA code per installed file); a
    failure becomes the record's ``error``, never the probe's."""
    started = time.perf_counter()
    try:
        reader = fatbin_reader()
        if reader is None:
            raise RuntimeError("lockd/probe/fatbin.py is not available to the probe")
        locations = [entry for entry in sys.path if entry]
        index = reader["record_index"](locations)
        libraries = reader["loaded_libraries"]("probe", locations, index=index)
        libraries["seconds"] = round(time.perf_counter() - started, 6)  # the RECORDs too
        mapped = [library["path"] for library in libraries["libraries"]]
        extensions = reader["extension_archs"](index, mapped)
    except Exception as error:
        seconds = round(time.perf_counter() - started, 6)
        failed = {"scope": "probe", "libraries": [], "seconds": seconds, "threads": 0}
        failed["error"] = _exception_text(error)
        return {"libraries": failed}
    return {"libraries": libraries, "extensions": extensions}


# --- the report -----------------------------------------------------------------------------


def collect() -> dict[str, Any]:
    """The whole report as a JSON-ready dict."""
    dists = distributions()
    report: dict[str, Any] = {
        "probe_version": PROBE_VERSION,
        "python": python_info(),
        "distributions": dists,
        "os": os_info(),
        "env": selected_env(),
        "torch": None,
    }
    kept = pip_report()
    if kept is not None:
        report["pip_report"] = kept
    # torch last: importing it may touch sys.path and os.environ (CUDA_MODULE_LOADING),
    # which the report must show as the environment had them.
    for dist in dists:
        if dist["name"] == "torch":
            report["torch"] = torch_info(dist["version"])
    imported = None
    if report["torch"] is not None and "error" not in report["torch"]:
        imported = sys.modules.get("torch")
    driver, gpus = driver_and_gpus(imported)
    if driver is not None:
        report["driver"] = driver
    if gpus:
        report["gpus"] = gpus
    if report["torch"] is not None and os.environ.get(LIBRARIES_ENV) != "0":
        report.update(loaded_evidence())  # last: NVML and torch's libraries are mapped by now
    return report


def render(report: Mapping[str, Any]) -> str:
    return json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"


def _write_all(fd: int, data: bytes) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def main() -> None:
    # Whatever else prints to stdout while we work (a noisy import of torch, a C library)
    # goes to stderr: the real stdout carries the one JSON document and nothing else.
    sys.stdout.flush()
    out: int | None = None
    try:
        out = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no stdout or stderr to juggle: write where stdout is
        if out is not None:
            os.close(out)
        out = None
    try:
        if FAMILY_IMPORTS_FLAG in sys.argv[1:]:
            report = family_imports()
        else:
            report = collect()
            if WITH_FAMILY_IMPORTS_FLAG in sys.argv[1:]:
                report["family_imports"] = family_imports(report["distributions"])
        document = render(report).encode("ascii")
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        sys.exit(1)
    sys.stdout.flush()
    if out is None:
        sys.stdout.write(document.decode("ascii"))
        sys.stdout.flush()
    else:
        _write_all(out, document)
        os.close(out)
    if "torch" in sys.modules:  # tearing torch down takes a second or two: the report is out
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
