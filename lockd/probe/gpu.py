"""lockd's GPU validation suite: what this environment computes, bit for bit.

This file runs INSIDE the target, streamed as ``python3 -c <source> [options]`` like the
environment probe, by whatever Python >= 3.8 the target has, with nothing of lockd installed
there. It needs torch and otherwise the standard library only, and prints exactly one compact
JSON document (sort_keys) to stdout: a ``GpuSuiteResult`` (lockd/model.py). On an unexpected
error it prints a traceback to stderr and exits 1; without torch it exits 2.

What it does:

1. Applies the deterministic settings before CUDA initialises and records them:
   ``CUBLAS_WORKSPACE_CONFIG`` (the target's own value if it sets one, else ``:4096:8``),
   ``torch.use_deterministic_algorithms(True)``, ``cudnn.benchmark = False``,
   ``cudnn.deterministic = True``, float32 matmul precision ``highest`` and both TF32
   switches off. On the CPU also one thread, so the bits do not depend on the core count.
2. Generates every input on the CPU from a fixed seed with ``torch.rand`` (a scalar
   Mersenne-Twister path: the same numbers on every CPU and torch build), then moves it to
   the device.
3. Runs the tests below on the first visible GPU (or the CPU: the fallback), each giving the
   sha256 of its output bits and statistics (sum, mean, l1, l2, absmax, sampled values) for
   a tolerance comparison when the bits cannot be compared. No test uses an atomics-based op.
4. With two or more GPUs, an NCCL all-reduce over all of them, one process per GPU, joined
   by an ``env://`` rendezvous on the loopback address.

The signature is the sha256 of the canonical JSON of the comparison key (device, compute
capability, SM count, torch, CUDA, cuDNN, cuBLAS, the settings) together with each test's
digest. lockd recomputes it on the host.

Options (argv): ``--device auto|cuda|cpu``, ``--only NAME,...``, ``--skip NAME,...``,
``--overrides JSON``. Overrides, for testing that verification notices a changed setting,
come from ``--overrides`` or else the ``LOCKD_GPU_SUITE_OVERRIDES`` environment variable: a
JSON object with any of ``matmul_allow_tf32``, ``cudnn_allow_tf32`` (booleans),
``float32_matmul_precision`` (highest|high|medium), ``cudnn_benchmark``, ``deterministic``
(booleans) and ``cublas_workspace_config`` (a string). They change the recorded settings, so
they show in the key and can never pass for the defaults.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs an import; mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

if __name__ == "__main__":
    # ``-c`` puts the working directory first on sys.path: a json.py there would shadow the
    # standard library imported below.
    sys.path[:] = [entry for entry in sys.path if entry]

import contextlib  # noqa: E402
import ctypes  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

SUITE_VERSION = 1
SEED = 20261128
DEFAULT_WORKSPACE = ":4096:8"
OVERRIDES_ENV = "LOCKD_GPU_SUITE_OVERRIDES"
OVERRIDE_TYPES = {
    "matmul_allow_tf32": bool,
    "cudnn_allow_tf32": bool,
    "float32_matmul_precision": str,
    "cudnn_benchmark": bool,
    "deterministic": bool,
    "cublas_workspace_config": str,
}
PRECISIONS = ("highest", "high", "medium")
SAMPLES = 8
REASON_LIMIT = 500
ALLREDUCE_TIMEOUT = 240.0
EXIT_NO_TORCH = 2

# Test names, in the order they run. lockd/evidence/gpurun.py keeps the tolerance of each.
TESTS = (
    "fp32_matmul",
    "tf32_matmul",
    "fp16_matmul",
    "bf16_matmul",
    "conv2d_fp32",
    "conv2d_fp16",
    "sdpa",
    "softmax",
    "layer_norm",
    "mlp_train",
    "compiled",
    "nccl_allreduce",
)


class NotRunError(Exception):
    """A test that does not run here: ``status`` is ``skipped`` or ``n/a``."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def text(value: object, limit: int = REASON_LIMIT) -> str:
    """A str that encodes to UTF-8 and ASCII-escapes cleanly, cut to ``limit`` characters."""
    return str(value).encode("utf-8", "replace").decode("utf-8", "replace")[:limit]


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def signature(key: dict[str, Any], tests: list[dict[str, Any]]) -> str:
    """sha256 of the canonical JSON of the key and each test's digest (or its status)."""
    digests = {t["name"]: t["sha256"] if t["status"] == "ok" else t["status"] for t in tests}
    return hashlib.sha256(canonical({"key": key, "tests": digests}).encode("ascii")).hexdigest()


# --- options ---------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {"device": "auto", "only": None, "skip": [], "overrides": None}
    i = 0
    while i < len(argv):
        flag = argv[i]
        if flag not in ("--device", "--only", "--skip", "--overrides") or i + 1 >= len(argv):
            raise SystemExit("lockd gpu suite: unknown option or missing value: %s" % flag)
        value = argv[i + 1]
        if flag == "--device":
            if value not in ("auto", "cuda", "cpu"):
                raise SystemExit("lockd gpu suite: --device takes auto, cuda or cpu")
            options["device"] = value
        elif flag == "--overrides":
            options["overrides"] = value
        else:
            names = [n for n in value.split(",") if n]
            unknown = [n for n in names if n not in TESTS]
            if unknown:
                raise SystemExit("lockd gpu suite: unknown test %s" % ", ".join(unknown))
            options[flag[2:]] = names
        i += 2
    return options


def parse_overrides(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise SystemExit("lockd gpu suite: overrides are not JSON: %s" % error) from None
    if not isinstance(value, dict):
        raise SystemExit("lockd gpu suite: overrides must be a JSON object")
    for name, setting in value.items():
        kind = OVERRIDE_TYPES.get(name)
        if kind is None:
            known = ", ".join(sorted(OVERRIDE_TYPES))
            raise SystemExit("lockd gpu suite: unknown override %r (known: %s)" % (name, known))
        if type(setting) is not kind:
            raise SystemExit("lockd gpu suite: override %s must be a %s" % (name, kind.__name__))
    precision = value.get("float32_matmul_precision")
    if precision is not None and precision not in PRECISIONS:
        raise SystemExit("lockd gpu suite: float32_matmul_precision: one of highest, high, medium")
    return value


# --- settings --------------------------------------------------------------------------------


def apply_settings(torch: Any, device: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply the deterministic settings (and any overrides); return them as torch reads them."""
    deterministic = overrides.get("deterministic", True)
    # torch.use_deterministic_algorithms also sets Inductor's flag, importing Inductor (seconds);
    # the compiled test calls it before compiling, everything else needs only the C flag.
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is not None:
        setter(deterministic)
    else:
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = overrides.get("cudnn_benchmark", False)
    # The precision first: setting it also sets matmul.allow_tf32 ("high" means TF32 on).
    torch.set_float32_matmul_precision(overrides.get("float32_matmul_precision", "highest"))
    if "matmul_allow_tf32" in overrides:
        torch.backends.cuda.matmul.allow_tf32 = overrides["matmul_allow_tf32"]
    elif "float32_matmul_precision" not in overrides:
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = overrides.get("cudnn_allow_tf32", False)
    threads = None
    if device == "cpu":
        torch.set_num_threads(1)
        threads = torch.get_num_threads()
    return {
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG", ""),
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": str(torch.get_float32_matmul_precision()),
        "fp16_reduced_precision_reduction": bool(
            _guarded(lambda: torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction)
        ),
        "bf16_reduced_precision_reduction": bool(
            _guarded(lambda: torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction)
        ),
        "seed": SEED,
        "threads": threads,
    }


# --- versions of the stack as this process loaded it -----------------------------------------


def dotted_version(code: Any) -> str:
    if isinstance(code, (tuple, list)):
        return ".".join(str(part) for part in code)
    number = int(code)
    if number >= 10000:
        return "%d.%d.%d" % (number // 10000, (number % 10000) // 100, number % 100)
    return "%d.%d.%d" % (number // 1000, (number % 1000) // 100, number % 100)


def mapped_library(stem: str) -> str | None:
    """The path of a shared library this process has mapped whose name starts with ``stem``."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                path = line.rstrip("\n").split(None, 5)[-1]
                if os.path.basename(path).startswith(stem) and ".so" in path:
                    return path
    except OSError:
        return None
    return None


def cublas_version() -> str | None:
    """cuBLAS as loaded: ``cublasGetProperty`` of the mapped libcublas (no CUDA context)."""
    path = mapped_library("libcublas.so")
    if path is None:
        return None
    try:
        library = ctypes.CDLL(path)
        parts = []
        for kind in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
            value = ctypes.c_int()
            if library.cublasGetProperty(kind, ctypes.byref(value)) != 0:
                return None
            parts.append(value.value)
    except (OSError, AttributeError):
        return None
    return "%d.%d.%d" % tuple(parts)


def _guarded(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception:
        return None


def comparison_key(torch: Any, device: str, settings: dict[str, Any]) -> dict[str, Any]:
    """What must match for two runs to be compared bit for bit (the GPU's name need not)."""
    key: dict[str, Any] = {
        "device": device,
        "torch": str(torch.__version__),
        "torch_git": _guarded(lambda: str(torch.version.git_version)),
        "cuda": _guarded(lambda: torch.version.cuda),
        "cudnn": None,
        "cublas": None,
        "compute_capability": None,
        "sm_count": None,
        "cpu_capability": None,
        "machine": platform.machine(),
        "settings": settings,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        key["compute_capability"] = "%d.%d" % (props.major, props.minor)
        key["sm_count"] = int(props.multi_processor_count)
        code = _guarded(lambda: torch.backends.cudnn.version())
        key["cudnn"] = None if code is None else dotted_version(code)
        key["cublas"] = cublas_version()
    else:
        key["cpu_capability"] = _guarded(lambda: str(torch.backends.cpu.get_cpu_capability()))
    return key


# --- digests and statistics ------------------------------------------------------------------


def tensor_bytes(tensor: Any) -> bytes:
    """The raw bits of a CPU tensor (ctypes: no numpy needed)."""
    tensor = tensor.contiguous()
    size = tensor.numel() * tensor.element_size()
    return ctypes.string_at(tensor.data_ptr(), size) if size else b""


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def describe(torch: Any, output: Any) -> dict[str, Any]:
    """sha256 of the output's bits (with its dtype and shape) and its statistics."""
    cpu = output.detach().to("cpu").contiguous()
    dtype = str(cpu.dtype).replace("torch.", "")
    shape = [int(n) for n in cpu.shape]
    header = ("%s|%s|" % (dtype, ",".join(str(n) for n in shape))).encode("ascii")
    digest = hashlib.sha256(header + tensor_bytes(cpu)).hexdigest()
    values = cpu.reshape(-1).to(torch.float64)
    count = int(values.numel())
    finite_mask = torch.isfinite(values)
    finite = values[finite_mask]
    total = float(finite.sum()) if finite.numel() else 0.0
    indices = sorted({(count - 1) * i // (SAMPLES - 1) for i in range(SAMPLES)}) if count else []
    return {
        "dtype": dtype,
        "shape": shape,
        "sha256": digest,
        "stats": {
            "numel": count,
            "nonfinite": count - int(finite.numel()),
            "sum": total,
            "mean": total / count if count else 0.0,
            "l1": float(finite.abs().sum()) if finite.numel() else 0.0,
            "l2": float(finite.pow(2).sum().sqrt()) if finite.numel() else 0.0,
            "absmax": float(finite.abs().max()) if finite.numel() else 0.0,
            "samples": [_number(float(values[i])) for i in indices],
        },
    }


# --- the tests -------------------------------------------------------------------------------


class Suite:
    def __init__(self, torch: Any, device: str) -> None:
        self.torch = torch
        self.device = device
        self.compile_seconds: float | None = None
        self.gpus = 0

    def uniform(self, index: int, *shape: int, dtype: Any = None) -> Any:
        """Inputs in [-1, 1) from a seeded CPU generator of their own, on the device."""
        torch = self.torch
        generator = torch.Generator().manual_seed(SEED + index)
        values = torch.rand(shape, generator=generator, dtype=torch.float32).mul_(2).sub_(1)
        if dtype is not None:
            values = values.to(dtype)
        return values.to(self.device)

    def cuda_only(self, what: str) -> None:
        if self.device != "cuda":
            raise NotRunError("n/a", "%s is a CUDA feature; this run is on the CPU" % what)

    # Matrix products: fp32 with K=1024; the half types (slow on a CPU) with K=1024 too but
    # fewer rows and columns.
    def fp32_matmul(self) -> Any:
        a = self.uniform(1, 1024, 1024)
        b = self.uniform(2, 1024, 1024)
        return a @ b  # TF32 as the settings say: off unless overridden

    def tf32_matmul(self) -> Any:
        self.cuda_only("TF32")
        torch = self.torch
        a = self.uniform(1, 1024, 1024)
        b = self.uniform(2, 1024, 1024)
        before = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32)
        try:
            torch.backends.cuda.matmul.allow_tf32 = True
            return a @ b
        finally:
            torch.set_float32_matmul_precision(before[0])
            torch.backends.cuda.matmul.allow_tf32 = before[1]

    def _half_matmul(self, dtype: Any) -> Any:
        a = self.uniform(3, 256, 1024, dtype=dtype)
        b = self.uniform(4, 1024, 256, dtype=dtype)
        return a @ b

    def fp16_matmul(self) -> Any:
        return self._half_matmul(self.torch.float16)

    def bf16_matmul(self) -> Any:
        return self._half_matmul(self.torch.bfloat16)

    def _conv(self, dtype: Any) -> Any:
        torch = self.torch
        x = self.uniform(5, 4, 32, 32, 32, dtype=dtype)
        w = self.uniform(6, 64, 32, 3, 3, dtype=dtype)
        b = self.uniform(7, 64, dtype=dtype)
        return torch.nn.functional.conv2d(x, w, b, padding=1)

    def conv2d_fp32(self) -> Any:
        return self._conv(self.torch.float32)

    def conv2d_fp16(self) -> Any:
        return self._conv(self.torch.float16)

    def sdpa(self) -> Any:
        torch = self.torch
        dtype = torch.float16
        q = self.uniform(8, 4, 8, 256, 64, dtype=dtype)
        k = self.uniform(9, 4, 8, 256, 64, dtype=dtype)
        v = self.uniform(10, 4, 8, 256, 64, dtype=dtype)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    def softmax(self) -> Any:
        return self.torch.softmax(self.uniform(11, 512, 1024).mul_(8), dim=-1)

    def layer_norm(self) -> Any:
        torch = self.torch
        x = self.uniform(12, 512, 1024)
        weight = self.uniform(13, 1024)
        bias = self.uniform(14, 1024)
        return torch.nn.functional.layer_norm(x, (1024,), weight, bias)

    def mlp_train(self) -> Any:
        """Three SGD steps (momentum) on a small MLP: forward, backward, update."""
        torch = self.torch
        sizes = ((256, 512), (512, 256), (256, 16))
        params = []
        for i, (fan_in, fan_out) in enumerate(sizes):
            scale = fan_in**-0.5
            weight = self.uniform(20 + 2 * i, fan_out, fan_in).mul_(scale)
            bias = self.uniform(21 + 2 * i, fan_out).mul_(scale)
            params += [weight.requires_grad_(), bias.requires_grad_()]
        x = self.uniform(30, 64, 256)
        target = self.uniform(31, 64, 16)
        # SGD with momentum as torch.optim.SGD does it (dampening 0, no Nesterov), written
        # out: torch.optim imports TorchDynamo on its first step, which costs seconds.
        lr, momentum = 0.05, 0.9
        buffers: list[Any] = [None] * len(params)
        losses = []
        for _ in range(3):
            for p in params:
                p.grad = None
            h = x
            for i in range(len(sizes)):
                h = torch.nn.functional.linear(h, params[2 * i], params[2 * i + 1])
                if i < len(sizes) - 1:
                    h = torch.relu(h)
            loss = (h - target).pow(2).mean()
            loss.backward()
            with torch.no_grad():
                for i, p in enumerate(params):
                    grad = p.grad
                    buffers[i] = (
                        grad.clone() if buffers[i] is None else buffers[i].mul_(momentum).add_(grad)
                    )
                    p.sub_(buffers[i], alpha=lr)
            losses.append(loss.detach().reshape(1))
        with torch.no_grad():
            return torch.cat([p.detach().reshape(-1) for p in params] + losses)

    def compiled(self) -> Any:
        """A small torch.compile'd function (pointwise and a row reduction): Inductor's code
        generation on this device. Its compile time is reported on its own."""
        torch = self.torch

        def function(x: Any, y: Any) -> Any:
            return torch.sin(x) * torch.cos(y) + (x * y).sum(dim=-1, keepdim=True) * 0.01

        x = self.uniform(40, 512, 512)
        y = self.uniform(41, 512, 512)
        started = time.perf_counter()
        try:
            torch.use_deterministic_algorithms(torch.are_deterministic_algorithms_enabled())
            compiled = torch.compile(function, dynamic=False, fullgraph=True)
            output = compiled(x, y)
            self.synchronize()
        except Exception as error:
            raise NotRunError(
                "skipped", "torch.compile is unavailable here: %s" % exception_text(error)
            ) from None
        finally:
            self.compile_seconds = time.perf_counter() - started
        return output

    def nccl_allreduce(self) -> Any:
        return nccl_allreduce(self.torch, self.gpus)

    def synchronize(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()


def exception_text(error: BaseException) -> str:
    message = str(error).strip().splitlines()
    return text("%s: %s" % (type(error).__name__, message[0] if message else ""))


def run_test(suite: Suite, name: str) -> dict[str, Any]:
    torch = suite.torch
    started = time.perf_counter()
    entry: dict[str, Any] = {"name": name}
    try:
        with contextlib.nullcontext() if name == "mlp_train" else torch.no_grad():
            output = getattr(suite, name)()
        suite.synchronize()
        entry.update(describe(torch, output))
        entry["status"] = "ok"
    except NotRunError as not_run:
        entry.update(status=not_run.status, reason=text(not_run.reason))
    except Exception as error:
        entry.update(status="error", reason=exception_text(error))
    entry["seconds"] = round(time.perf_counter() - started, 6)
    return entry


# --- NCCL all-reduce, one process per GPU ----------------------------------------------------

ALLREDUCE_WORKER = r"""
import hashlib, json, os, sys, ctypes
sys.path[:] = [entry for entry in sys.path if entry]
import torch
import torch.distributed as dist
rank = int(os.environ["RANK"])
world = int(os.environ["WORLD_SIZE"])
seed = int(os.environ["LOCKD_SEED"])
scratch = sys.argv[1]
torch.cuda.set_device(rank)
dist.init_process_group("nccl")
generator = torch.Generator().manual_seed(seed + 100 + rank)
values = torch.rand((1 << 22,), generator=generator, dtype=torch.float32).mul_(2).sub_(1)
half = values[: 1 << 20].to(torch.float16)
out = []
for tensor in (values, half):
    tensor = tensor.to("cuda")
    dist.all_reduce(tensor)
    out.append(tensor.cpu())
torch.cuda.synchronize()
dist.barrier()
dist.destroy_process_group()
digests = []
for tensor in out:
    data = ctypes.string_at(tensor.data_ptr(), tensor.numel() * tensor.element_size())
    digests.append(hashlib.sha256(data).hexdigest())
if rank == 0:
    torch.save(out, os.path.join(scratch, "sums.pt"))
with open(os.path.join(scratch, "rank%d.json" % rank), "w") as handle:
    json.dump(digests, handle)
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nccl_allreduce(torch: Any, gpus: int) -> Any:
    """All-reduce fp32 (4M elements) and fp16 (1M) over every visible GPU; every rank must get
    the same bits. Returns the fp32 and fp16 sums (as rank 0 saw them) concatenated."""
    if gpus < 2:
        raise NotRunError(
            "skipped", "the all-reduce needs two or more GPUs; this run sees %d" % gpus
        )
    import tempfile

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lockd-allreduce-") as scratch:
        processes = []
        for rank in range(gpus):
            env = dict(os.environ)
            env.update(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(gpus),
                LOCKD_SEED=str(SEED),
            )
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", ALLREDUCE_WORKER, scratch],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        failures = []
        deadline = time.monotonic() + ALLREDUCE_TIMEOUT
        for rank, process in enumerate(processes):
            try:
                _, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                for other in processes:
                    other.kill()
                raise RuntimeError("the all-reduce timed out (rank %d)" % rank) from None
            if process.returncode != 0:
                tail = " | ".join(stderr.decode("utf-8", "replace").strip().splitlines()[-3:])
                failures.append("rank %d exited %d: %s" % (rank, process.returncode, tail))
        if failures:
            raise RuntimeError("; ".join(failures))
        digests = set()
        for rank in range(gpus):
            with open(os.path.join(scratch, "rank%d.json" % rank), encoding="utf-8") as handle:
                digests.add(tuple(json.load(handle)))
        if len(digests) != 1:
            raise RuntimeError("the ranks got different bits from the same all-reduce")
        fp32, fp16 = torch.load(os.path.join(scratch, "sums.pt"))
    return torch.cat([fp32, fp16.to(torch.float32)])


# --- what this process loaded -----------------------------------------------------------------
#
# The same record the environment probe makes after ``import torch``, made after the tests, when
# the libraries torch loads lazily (cuDNN's engines, cuBLAS, cuBLASLt, NVRTC...) are mapped too.
# lockd/probe/fatbin.py does it; lockd embeds its source below when it streams this file.

FATBIN_SOURCE = None  # lockd/probe/fatbin.py's source, embedded by lockd when it streams this file
LIBRARIES_ENV = "LOCKD_PROBE_LIBRARIES"


def loaded_libraries() -> dict[str, Any]:
    """lockd/probe/fatbin.py's mapped-library record (scope ``suite``); a failure is its
    ``error``."""
    started = time.perf_counter()
    try:
        source = FATBIN_SOURCE
        if source is None:  # run from a checkout: the file beside this one
            here = os.path.abspath(globals().get("__file__") or "")
            path = os.path.join(os.path.dirname(here), "fatbin.py")
            with open(path, encoding="utf-8") as handle:
                source = handle.read()
        namespace: dict[str, Any] = {"__name__": "lockd_fatbin"}
        exec(compile(source, "lockd/probe/fatbin.py", "exec"), namespace)
        locations = [entry for entry in sys.path if entry]
        record: dict[str, Any] = namespace["loaded_libraries"]("suite", locations)
    except Exception as error:
        return {
            "scope": "suite",
            "libraries": [],
            "seconds": round(time.perf_counter() - started, 6),
            "error": exception_text(error),
        }
    return record


# --- the run ---------------------------------------------------------------------------------


def uuid_digest(uuid: object) -> str | None:
    """sha256 of a GPU UUID as NVML prints it (GPU-xxxxxxxx-...): the probe's digest too."""
    value = str(uuid or "").strip().lower()
    if not value:
        return None
    if not value.startswith("gpu-") and not value.startswith("mig-"):
        value = "gpu-" + value
    return hashlib.sha256(value.encode("ascii", "replace")).hexdigest()


def gpu_identity(torch: Any) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu_name": text(props.name, 256),
        "gpu_uuid_sha256": uuid_digest(_guarded(lambda: props.uuid)),
        "gpu_count": int(torch.cuda.device_count()),
    }


def run(options: dict[str, Any]) -> dict[str, Any]:
    overrides = parse_overrides(options["overrides"] or os.environ.get(OVERRIDES_ENV))
    started = time.perf_counter()
    # Before CUDA initialises: cuBLAS reads it once. The target's own value wins (it is how
    # its workloads run), then an override; it is recorded either way.
    if "cublas_workspace_config" in overrides:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = overrides["cublas_workspace_config"]
    else:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", DEFAULT_WORKSPACE)
    # Inductor compiles one small kernel here: in this process, not in a pool of workers that
    # each import torch (seconds to start, more to shut down). The generated code is the same.
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    try:
        import torch
    except ImportError as error:
        sys.stderr.write("lockd gpu suite: torch is not importable here: %s\n" % error)
        sys.exit(EXIT_NO_TORCH)
    imported = time.perf_counter()
    available = bool(_guarded(lambda: torch.cuda.is_available()))
    if options["device"] == "cuda" and not available:
        raise SystemExit("lockd gpu suite: --device cuda, but torch sees no usable GPU here")
    device = "cuda" if available and options["device"] != "cpu" else "cpu"
    settings = apply_settings(torch, device, overrides)
    identity: dict[str, Any] = {"gpu_name": None, "gpu_uuid_sha256": None, "gpu_count": 0}
    if device == "cuda":
        torch.cuda.set_device(0)
        identity = gpu_identity(torch)
    suite = Suite(torch, device)
    selected = [
        name
        for name in TESTS
        if (options["only"] is None or name in options["only"]) and name not in options["skip"]
    ]
    tests: list[dict[str, Any]] = []
    allreduce_seconds = None
    suite_started = time.perf_counter()
    for name in TESTS:
        if name not in selected:
            tests.append(
                {"name": name, "status": "skipped", "reason": "not selected", "seconds": 0}
            )
        elif name == "nccl_allreduce":
            begun = time.perf_counter()
            if device != "cuda":
                tests.append(
                    {"name": name, "status": "n/a", "reason": "NCCL needs GPUs", "seconds": 0}
                )
                continue
            suite.gpus = identity["gpu_count"]
            tests.append(run_test(suite, name))
            if tests[-1]["status"] in ("ok", "error"):
                allreduce_seconds = time.perf_counter() - begun
        else:
            tests.append(run_test(suite, name))
    finished = time.perf_counter()
    # The key after the tests: cuBLAS and cuDNN are loaded by then.
    key = comparison_key(torch, device, settings)
    timed: list[float] = [
        t["seconds"] for t in tests if t["name"] not in ("compiled", "nccl_allreduce")
    ]
    result = {
        "suite_version": SUITE_VERSION,
        "device": device,
        "key": key,
        "overrides": sorted(overrides),
        "tests": tests,
        "signature": signature(key, tests),
        "timing": {
            "import_torch": round(imported - started, 6),
            "suite": round(sum(timed), 6),
            "compile": None if suite.compile_seconds is None else round(suite.compile_seconds, 6),
            "allreduce": None if allreduce_seconds is None else round(allreduce_seconds, 6),
            "total": round(finished - suite_started, 6),
        },
    }
    result.update(identity)
    if os.environ.get(LIBRARIES_ENV) != "0":
        result["libraries"] = loaded_libraries()  # after the tests: cuDNN, cuBLAS are mapped
    return result


def _write_all(fd: int, data: bytes) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def main() -> None:
    # Whatever else prints to stdout (torch, Inductor, NCCL) goes to stderr: the real stdout
    # carries the one JSON document and nothing else.
    sys.stdout.flush()
    out: int | None = None
    try:
        out = os.dup(1)
        os.dup2(2, 1)
    except OSError:
        if out is not None:
            os.close(out)
        out = None
    try:
        options = parse_args(sys.argv[1:])
        document = (canonical(run(options)) + "\n").encode("ascii")
    except SystemExit:
        raise
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
    # The document is out. Tearing down torch, CUDA and Inductor takes seconds and can only
    # add noise: leave now.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
