"""`lockd watch` on N running containers: the first full pass, and the agent's CPU per
steady-state interval with nothing changing, beside a naive loop of `lockd verify` (one process
per container) over the same containers, in the same run.

Targets (issue 8): steady state <= 2 % of one core at a 60 s interval with 50 containers; the
first pass >= 3x faster than the naive loop.

Everything runs on this machine: one image (the small test image: a venv with six, idna and
packaging, from lockd/base:bookworm and the wheels in $LOCKD_WHEELS), its manifest recorded and
pushed to a `lockd serve` on loopback (SQLite), N containers of it (`sleep infinity`), removed
at the end. CPU is process CPU time (user + system, from /proc or getrusage), not wall time:
the machine is shared. Needs the machine set up by scripts/setup.

Usage: python bench/watch.py [--containers 50] [--interval 60] [--intervals 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "lockd-bench/watch:latest"
LABEL = "lockd.bench-watch"
LOCKD = [sys.executable, "-m", "lockd"]
TICK = os.sysconf("SC_CLK_TCK")


def run(argv: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if result.returncode not in ok:
        sys.exit(f"{' '.join(argv[:4])} exited {result.returncode}: {result.stderr[-3000:]}")
    return result.stdout


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    what: str, check: Callable[[], bool], deadline: float = 600.0, poll: float = 0.5
) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            sys.exit(f"waited {deadline:g} s for {what}")
        time.sleep(poll)


def scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    return {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def build_image(wheels: Path) -> None:
    with tempfile.TemporaryDirectory() as context:
        shutil.copytree(ROOT / "tests/assets/images/app", context, dirs_exist_ok=True)
        shutil.copytree(wheels, Path(context) / "wheels")
        subprocess.run(
            ["docker", "build", "-q", "--network", "none", "-t", IMAGE, context],
            check=True,
            capture_output=True,
        )


def naive_loop(
    names: list[str], manifest: Path, pub: Path, env: dict[str, str]
) -> tuple[float, float]:
    """(wall s, CPU s of the lockd processes) of `lockd verify` on every container in turn."""
    cpu = children_cpu()
    start = time.perf_counter()
    for name in names:
        run([*LOCKD, "verify", name, "--manifest", str(manifest), "--key", str(pub), "--json"], env)
    return time.perf_counter() - start, children_cpu() - cpu


def agent_once(
    url: str, label: str, spool: Path, pub: Path, env: dict[str, str]
) -> tuple[float, float]:
    """(wall s, CPU s) of `lockd watch --once`: one full pass, every container probed, the
    batch delivered."""
    shutil.rmtree(spool, ignore_errors=True)
    cpu = children_cpu()
    start = time.perf_counter()
    out = run(
        [*LOCKD, "watch", "--once", "--server", url, "--label-selector", f"{LABEL}={label}",
         "--spool", str(spool), "--key", str(pub), "--host", "bench"],
        env,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if out.count("\tpass") != out.count("\n"):
        sys.exit(f"the agent did not pass every container:\n{out[-2000:]}")
    return elapsed, children_cpu() - cpu


def start_service(tmp: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Keys, the image's manifest, `lockd serve` on loopback with it pushed: (process, URL,
    public key); sets LOCKD_TOKEN in ``env``."""
    prefix = tmp / "k"
    run([*LOCKD, "keygen", "--output-key-prefix", str(prefix)], env)
    key, pub = prefix.with_suffix(".key"), prefix.with_suffix(".pub")
    manifest = tmp / "app.dsse.json"
    run([*LOCKD, "record", f"image:{IMAGE}", "--key", str(key), "-o", str(manifest)], env)
    service_env = {
        **env,
        "LOCKD_DATABASE_URL": f"sqlite:///{tmp / 'lockd.db'}",
        "LOCKD_TRUSTED_KEYS": str(pub),
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp / "serve.log").open("wb")
    server = subprocess.Popen(
        [*LOCKD, "serve", "--port", str(port)], env=service_env, stdout=log, stderr=log
    )
    wait_for("the service", lambda: _ready(url), 120)
    token = run([*LOCKD, "token", "create", "bench", "--role", "recorder"], service_env)
    env["LOCKD_TOKEN"] = token.strip()
    run([*LOCKD, "push", str(manifest), "--server", url], env)
    return server, url, pub


def first_passes(
    args: argparse.Namespace, names: list[str], url: str, label: str, tmp: Path, env: dict[str, str]
) -> None:
    """The naive loop and the agent's first pass, interleaved (alternating which goes first)."""
    manifest, pub = tmp / "app.dsse.json", tmp / "k.pub"
    naive: list[tuple[float, float]] = []
    once: list[tuple[float, float]] = []
    for round_ in range(args.rounds):
        order = ("naive", "agent") if round_ % 2 == 0 else ("agent", "naive")
        for which in order:
            if which == "naive":
                naive.append(naive_loop(names, manifest, pub, env))
            else:
                once.append(agent_once(url, label, tmp / "once-spool", pub, env))
        print(
            f"round {round_ + 1}: naive {naive[-1][0]:.1f} s wall / {naive[-1][1]:.1f} s CPU; "
            f"agent first pass {once[-1][0]:.1f} s wall / {once[-1][1]:.2f} s CPU; "
            f"load {load()}"
        )
    naive_wall = statistics.median(w for w, _ in naive)
    naive_cpu = statistics.median(c for _, c in naive)
    once_wall = statistics.median(w for w, _ in once)
    once_cpu = statistics.median(c for _, c in once)
    ratio = naive_wall / once_wall
    print(
        f"naive loop of `lockd verify` (median of {len(naive)}): {naive_wall:.1f} s wall, "
        f"{naive_cpu:.1f} s CPU of the lockd processes"
    )
    print(
        f"agent first pass, `lockd watch --once` (median of {len(once)}): {once_wall:.1f} s "
        f"wall, {once_cpu:.2f} s CPU"
    )
    print(
        f"  -> {ratio:.1f}x faster (wall), {naive_cpu / once_cpu:.1f}x less CPU; "
        f"target >= 3x: {'met' if ratio >= 3 else 'NOT met'}"
    )


def steady_state(
    args: argparse.Namespace, url: str, label: str, tmp: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """A long-running agent: its first pass, then its CPU over ``args.intervals`` intervals
    with nothing changing."""
    port = free_port()
    log = (tmp / "agent.log").open("wb")
    agent = subprocess.Popen(
        [*LOCKD, "watch", "--server", url, "--interval", f"{args.interval}s",
         "--label-selector", f"{LABEL}={label}", "--spool", str(tmp / "spool"),
         "--key", str(tmp / "k.pub"), "--host", "bench", "--metrics-addr", f"127.0.0.1:{port}",
         "--concurrency", str(args.concurrency)],
        env=env, stdout=log, stderr=log,
    )  # fmt: skip
    started = time.perf_counter()
    wait_for(
        "the first pass",
        lambda: (
            scrape(port).get('lockd_agent_containers{verdict="pass"}') == args.containers
            and scrape(port).get("lockd_agent_spool_batches") == 0
        ),
    )
    print(
        f"long-running agent: first pass {time.perf_counter() - started:.1f} s wall, "
        f"{process_cpu(agent.pid):.2f} s CPU (start-up included)"
    )
    before = scrape(port)
    passes = before["lockd_agent_passes_total"]
    wait_for("the next pass", lambda: scrape(port)["lockd_agent_passes_total"] > passes)
    time.sleep(1.0)  # let that pass's batch go out: measure from one pass's end to another's
    cpu0, t0 = process_cpu(agent.pid), time.perf_counter()
    passes = scrape(port)["lockd_agent_passes_total"]
    # not a scrape in between (each costs the agent CPU): sleep to just before the last pass
    time.sleep(max(0.0, args.interval * args.intervals - 5.0))
    wait_for(
        "the steady intervals",
        lambda: scrape(port)["lockd_agent_passes_total"] >= passes + args.intervals,
        deadline=args.interval * 2,
        poll=1.0,
    )
    time.sleep(1.0)
    cpu1, t1 = process_cpu(agent.pid), time.perf_counter()
    after = scrape(port)
    probes = after["lockd_agent_probes_total"] - before["lockd_agent_probes_total"]
    share = 100.0 * (cpu1 - cpu0) / (t1 - t0)
    print(
        f"steady state at a {args.interval} s interval, {args.intervals} intervals "
        f"({t1 - t0:.0f} s), nothing changing: "
        f"{(cpu1 - cpu0) / args.intervals * 1000:.0f} ms CPU per interval = {share:.3f} % of "
        f"one core; probes in that time: {probes:.0f}; RSS {_rss_mib(agent.pid):.0f} MiB; "
        f"target <= 2 %: {'met' if share <= 2 else 'NOT met'}"
    )
    return agent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--interval", type=int, default=60, help="seconds")
    parser.add_argument("--intervals", type=int, default=3, help="steady intervals measured")
    parser.add_argument("--rounds", type=int, default=2, help="naive loop / first pass rounds")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} cores, load average {load()} (start)")
    build_image(Path(os.environ.get("LOCKD_WHEELS", "/var/cache/lockd/wheels")))
    label = uuid.uuid4().hex[:12]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKD_")}
    env["LOCKD_PASSWORD"] = "bench"
    names = [f"lockd-bench-watch-{label}-{i:02d}" for i in range(args.containers)]
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            server, url, _ = start_service(tmp, env)
            processes.append(server)
            started = time.perf_counter()
            for name in names:
                subprocess.run(
                    ["docker", "run", "-d", "--name", name, "--label", f"{LABEL}={label}",
                     "--label", "lockd.test=1", IMAGE],
                    check=True,
                    capture_output=True,
                )  # fmt: skip
            print(
                f"started {len(names)} containers in {time.perf_counter() - started:.1f} s "
                f"(image {IMAGE}; probe concurrency {args.concurrency})"
            )
            first_passes(args, names, url, label, tmp, env)
            processes.append(steady_state(args, url, label, tmp, env))
            print(f"load average {load()} (end)")
        finally:
            for process in reversed(processes):
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        process.kill()
            subprocess.run(["docker", "rm", "-f", *names], capture_output=True, check=False)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__":
    main()
