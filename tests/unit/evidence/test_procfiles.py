"""The /proc parsers of the workload reader (lockd.evidence.procfiles, #17) with hostile input:
maps lines with spaces, " (deleted)", escapes and garbage; a command name holding ") ";
command lines and environments cut or crafted; grouping by executable and script or module;
CUDA library names and versions from file names."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockd.evidence.procfiles import (
    MapLine,
    fit,
    group_key,
    library_of,
    parse_cmdline,
    parse_environ,
    parse_maps,
    parse_stat,
    special_kind,
)
from lockd.evidence.workload import read_workload

MAPS = b"""\
55d0c0a00000-55d0c0a02000 r--p 00000000 fe:00 26723                      /usr/bin/python3.11
55d0c0a02000-55d0c0a04000 r-xp 00002000 fe:00 26723                      /usr/bin/python3.11
00400000-00401000 r-xp 00000000 08:01 12                                 /opt/old static
7f0000000000-7f0000001000 r-xp 00000000 00:2a 99                         /tmp/my lib (1).so (deleted)
7f0000001000-7f0000002000 rw-s 00000000 00:01 1024                       /memfd:torch (deleted)
7f0000002000-7f0000003000 rw-s 00000000 00:05 7                          /dev/nvidia0
7f0000003000-7f0000004000 rw-s 00000000 00:19 4                          /dev/shm/torch_1_2
7f0000004000-7f0000005000 rw-s 00000000 00:01 32768                      /SYSV00000000 (deleted)
7f0000005000-7f0000006000 rw-p 00000000 00:00 0
7f0000006000-7f0000007000 rw-p 00000000 00:00 0                          [anon:arena]
7f0000007000-7f0000008000 r-xp 00000000 00:00 0                          [vdso]
7f0000008000-7f0000009000 rw-p 00000000 00:0e 12                         anon_inode:[perf_event]
7f0000009000-7f000000a000 r-xp 00000000 fe:00 5                          /srv/a\\012b.so
7ffd75774000-7ffd75795000 rw-p 00000000 00:00 0                          [stack]
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0                          [heap]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
"""


def test_maps_lines_keep_spaces_and_the_deleted_mark() -> None:
    lines, bad = parse_maps(MAPS)
    assert bad == 0
    assert len(lines) == 16
    assert lines[1] == MapLine(
        start=0x55D0C0A02000,
        end=0x55D0C0A04000,
        perms="r-xp",
        offset=0x2000,
        device="fe:00",
        inode=26723,
        path="/usr/bin/python3.11",
        deleted=False,
    )
    assert lines[1].executable and not lines[1].shared
    assert lines[2].path == "/opt/old static"
    assert lines[2].range == "400000-401000"  # map_files names drop the leading zeros
    assert (lines[3].path, lines[3].deleted) == ("/tmp/my lib (1).so", True)
    assert lines[8].path == ""
    padded, _ = parse_maps(b"7f0000005000-7f0000006000 rw-p 00000000 00:00 0   \n")
    assert padded[0].path == ""  # an anonymous mapping, padded or not
    assert lines[12].path == "/srv/a\\012b.so"  # as the kernel prints it: no unescaping


def test_what_is_not_a_file_is_named_by_kind() -> None:
    lines, _ = parse_maps(MAPS)
    assert [special_kind(line) for line in lines] == [
        None,
        None,
        None,
        None,
        ("memfd", "torch"),
        None,  # a path: the kernel says through map_files whether it is a device
        ("shm", "/dev/shm/torch_1_2"),
        ("sysv", "SYSV00000000"),
        ("anon", None),
        ("anon", "arena"),
        ("vdso", "[vdso]"),
        ("other", "anon_inode:[perf_event]"),
        None,
        ("stack", None),
        ("heap", None),
        ("vdso", "[vsyscall]"),
    ]


@pytest.mark.parametrize(
    "line",
    [
        b"garbage",
        b"7f00-7e00 r-xp 00000000 fe:00 5 /end/before/start.so",
        b"7f00-7f10 rwzp 00000000 fe:00 5 /bad/perms.so",
        b"7f00-7f10 r-xp 00000000 fe00 5 /no/colon.so",
        b"7f00-7f10 r-xp 00000000 fe:00 -5 /negative.so",
        b"7f00-7f10 r-xp 00000000 fe:00 5\t/tab.so",
        b"7f00-7f10 r-xp zz fe:00 5 /hex.so",
        b"1" * 20 + b"-" + b"2" * 20 + b" r-xp 0 fe:00 5 /huge.so",
    ],
)
def test_a_line_not_in_the_kernels_format_is_counted_never_trusted(line: bytes) -> None:
    lines, bad = parse_maps(MAPS + line + b"\n")
    assert (len(lines), bad) == (16, 1)


def test_ten_thousand_mappings_parse_in_order() -> None:
    data = b"".join(
        b"%012x-%012x r--p 00000000 fe:00 7  /data/w.bin\n"
        % (0x7F0000000000 + i * 8192, 0x7F0000000000 + i * 8192 + 4096)
        for i in range(10_000)
    )
    lines, bad = parse_maps(data)
    assert (len(lines), bad) == (10_000, 0)
    assert lines[-1].start == 0x7F0000000000 + 9_999 * 8192


def test_the_stat_command_name_may_hold_parentheses_and_spaces() -> None:
    fields = " ".join(["S", "42", *["0"] * 17, "123456", "0"])
    stat = parse_stat(b"77 (evil) S 1 (x) " + fields.encode())
    assert stat is not None
    assert (stat.state, stat.ppid, stat.started) == ("S", 42, 123456)
    assert parse_stat(b"77 (python3) Z 1") is None
    assert parse_stat(b"no parentheses") is None


def test_command_lines_are_cut_and_say_so() -> None:
    assert parse_cmdline(b"python3\0-m\0torch.distributed.run\0", 256) == (
        ["python3", "-m", "torch.distributed.run"],
        False,
    )
    assert parse_cmdline(b"a\0b\0c\0", 2) == (["a", "b"], True)
    args, cut = parse_cmdline(b"x" * 5000 + b"\0\xff\0", 8)
    assert cut and len(args[0]) <= 4096 and "sha256:" in args[0]
    assert args[1] == "\\xff"
    assert parse_cmdline(b"", 8) == ([], False)


def test_the_environment_keeps_the_tracked_variables_first_value_only() -> None:
    data = b"LD_PRELOAD=/x.so\0HOME=/root\0LD_PRELOAD=/y.so\0junk\0=empty\0PYTHONPATH=\0"
    env, more = parse_environ(data, lambda n: n.startswith(("LD_", "PYTHON")), 10)
    assert (env, more) == ({"LD_PRELOAD": "/x.so", "PYTHONPATH": ""}, False)
    many = b"".join(b"LD_%d=1\0" % i for i in range(20))
    env, more = parse_environ(many, lambda n: True, 5)
    assert (len(env), more) == (5, True)


@pytest.mark.parametrize(
    ("command", "cwd", "key"),
    [
        (["python3", "train.py", "--lr", "1e-3"], "/app", "/usr/bin/python3.11 /app/train.py"),
        (
            ["python3", "-u", "./sub/../train.py", "--x"],
            "/app",
            "/usr/bin/python3.11 /app/train.py",
        ),
        (
            ["python", "-m", "ipykernel_launcher", "-f", "k.json"],
            "/",
            "/usr/bin/python3.11 -m ipykernel_launcher",
        ),
        (
            ["python", "-mtorch.distributed.run", "--nproc-per-node", "2"],
            None,
            "/usr/bin/python3.11 -m torch.distributed.run",
        ),
        (
            ["python", "-X", "dev", "-W", "error", "-OO", "/srv/job.py"],
            None,
            "/usr/bin/python3.11 /srv/job.py",
        ),
        (["python", "-Wdefault", "-um", "pkg.main"], None, "/usr/bin/python3.11 -m pkg.main"),
        (["python", "-c", "import time; time.sleep(9)"], None, "/usr/bin/python3.11 -c"),
        (["python", "-", "<", "x"], None, "/usr/bin/python3.11 -"),
        (
            ["python", "--check-hash-based-pycs", "always", "run.py"],
            "/w",
            "/usr/bin/python3.11 /w/run.py",
        ),
        (["python", "--", "-weird.py"], "/w", "/usr/bin/python3.11 /w/-weird.py"),
        (["python"], None, "/usr/bin/python3.11"),
        (["python", "-i"], None, "/usr/bin/python3.11"),
        (["my worker title set by setproctitle"], None, "/usr/bin/python3.11"),
    ],
)
def test_a_python_process_is_grouped_by_its_script_or_module(
    command: list[str], cwd: str | None, key: str
) -> None:
    assert group_key("/usr/bin/python3.11", command, cwd) == key


def test_other_programs_are_grouped_by_executable_only() -> None:
    assert group_key("/usr/bin/dash", ["sh", "-c", "exec python3 x.py"], "/") == "/usr/bin/dash"
    assert (
        group_key("/opt/venv/bin/pypy3", ["pypy3", "a.py"], "/w") == "/opt/venv/bin/pypy3 /w/a.py"
    )
    assert len(group_key("/usr/bin/python3", ["python3", "/" + "a" * 5000], None)) <= 4096


@pytest.mark.parametrize(
    ("path", "soname", "found"),
    [
        (
            "/usr/local/cuda/lib64/libcudart.so.12.4.127",
            "libcudart.so.12",
            ("libcudart", "cuda", "12.4.127"),
        ),
        (
            "/v/site-packages/nvidia/cudnn/lib/libcudnn_cnn.so.9",
            "libcudnn_cnn.so.9",
            ("libcudnn_cnn", "cuda", "9"),
        ),
        ("/v/site-packages/torch/lib/libnccl-1a2b3c4d.so.2", None, ("libnccl", "cuda", "2")),
        (
            "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15",
            "libcuda.so.1",
            ("libcuda", "driver", "550.54.15"),
        ),
        ("/v/site-packages/torch/lib/libtorch_cuda.so", None, ("libtorch_cuda", "cuda", None)),
        ("/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", "libz.so.1", None),
        ("/usr/local/cuda/bin/nvcc", None, None),
    ],
)
def test_cuda_libraries_are_named_with_the_version_their_file_says(
    path: str, soname: str | None, found: tuple[str, str, str | None] | None
) -> None:
    assert library_of(path, soname) == found


def test_fit_keeps_a_digest_of_what_it_cuts() -> None:
    assert fit("short") == "short"
    a, b = fit("x" * 5000 + "a"), fit("x" * 5000 + "b")
    assert len(a) <= 4096 and a != b


def test_a_kernel_without_map_files_leaves_the_workload_not_examined(tmp_path: Path) -> None:
    """A /proc as such a kernel writes it (no map_files): the files are not examined, and none
    is opened by its name instead; a line of maps not in the format is the process's unread."""
    proc = tmp_path / "proc"
    pid = proc / "4242"
    pid.mkdir(parents=True)
    (proc / "self").mkdir()
    fields = " ".join(["S", "1", *["0"] * 17, "777", "0"])
    (pid / "stat").write_text(f"4242 (python3) {fields}\n")
    (pid / "maps").write_bytes(MAPS + b"not a mapping\n")
    (pid / "cmdline").write_bytes(b"python3\0-m\0app\0")
    (pid / "environ").write_bytes(b"LD_PRELOAD=/x.so\0HOME=/root\0")
    (pid / "status").write_bytes(b"Name:\tpython3\nUid:\t1000\t1000\t1000\t1000\n")
    (pid / "cwd").symlink_to("/app")
    (pid / "exe").symlink_to("/usr/bin/python3.11")
    found = read_workload([4242], init_pid=4242, proc=str(proc))
    assert found.not_examined == (
        "this kernel has no /proc/PID/map_files: the mapped files cannot be read"
    )
    assert found.files == []
    [process] = found.processes
    assert (process.group, process.origin, process.uid, process.started) == (
        "/usr/bin/python3.11 -m app",
        "init",
        1000,
        777,
    )
    assert process.env == {"LD_PRELOAD": "/x.so"}
    assert process.mappings == 16
    assert process.unread == "1 line(s) of /proc/4242/maps not in the kernel's format"
