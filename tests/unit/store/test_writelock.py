"""lockd.store.writelock: SQLite writers of several processes queue on a lock file beside the
database (an flock), threads of one process on a lock."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

from lockd.store.writelock import WriteLock

HOLDER = """
import sys
from lockd.store.writelock import WriteLock
lock = WriteLock(sys.argv[1])
with lock:
    print("held", flush=True)
    sys.stdin.readline()  # hold it until told
print("released", flush=True)
"""


def _free(path: Path) -> bool:
    """Whether another open of the lock file could take it now."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing the descriptor drops a lock it took
    return True


def test_a_writer_in_another_process_holds_the_lock_file(tmp_path: Path) -> None:
    database = tmp_path / "lockd.db"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        assert child.stdout.readline() == "held\n"
        lock_file = tmp_path / "lockd.db-writer"
        assert not _free(lock_file)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "released\n"
        assert _free(lock_file)
    finally:
        child.kill()
        child.wait()


def test_threads_of_one_process_take_turns(tmp_path: Path) -> None:
    lock = WriteLock(str(tmp_path / "lockd.db"))
    inside = 0
    most = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(200):
            with lock:
                with guard:
                    inside += 1
                    most = max(most, inside)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lock.close()
    assert most == 1


def test_without_a_database_path_only_threads_are_queued(tmp_path: Path) -> None:
    lock = WriteLock(None)
    with lock:
        pass
    lock.close()
    assert list(tmp_path.iterdir()) == []
