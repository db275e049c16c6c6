"""Run a notebook as Jupyter runs it (#17's test image): ``python3 run_notebook.py NOTEBOOK
[KERNELS]``.

Each kernel is started by jupyter_client's ``MultiKernelManager`` from the native kernel spec,
as a notebook server starts one: ``python -m ipykernel_launcher -f CONNECTION-FILE``, its
connection file in Jupyter's runtime directory (``kernel-ID.json``), ``JPY_PARENT_PID`` set by
jupyter_client's launcher and ``JPY_SESSION_NAME`` the notebook's path (as jupyter_server sets
it), in the notebook's folder. The notebook's code cells are sent to each kernel as execute
requests, in order; what they print comes back on IOPub and is printed here, one line per
kernel; a cell that fails ends the run. Then ``ready``, and the kernels are kept running (shut
down on SIGTERM).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from jupyter_client.manager import KernelManager
from jupyter_client.multikernelmanager import MultiKernelManager
from jupyter_core.paths import jupyter_runtime_dir


def code_cells(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        notebook = json.load(handle)
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def run(manager: KernelManager, cells: list[str]) -> list[str]:
    """The cells executed in order in ``manager``'s kernel; what they printed."""
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
        printed: list[str] = []

        def output(message: dict[str, Any]) -> None:
            if message["msg_type"] == "stream":
                printed.append(message["content"]["text"].strip())

        for number, source in enumerate(cells, 1):
            reply = client.execute_interactive(source, timeout=120, output_hook=output)
            content = reply["content"]
            if content["status"] != "ok":
                trace = "\n".join(content.get("traceback", []))
                sys.exit(f"cell {number} failed: {content.get('ename')}: {trace}")
        return printed
    finally:
        client.stop_channels()


def main() -> None:
    notebook = os.path.abspath(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    cells = code_cells(notebook)
    runtime = jupyter_runtime_dir()  # as jupyter_server's kernel manager has it
    os.makedirs(runtime, mode=0o700, exist_ok=True)
    kernels = MultiKernelManager(connection_dir=runtime)
    env = {**os.environ, "JPY_SESSION_NAME": notebook}
    started = [  # started together, then run: a server's sessions start side by side
        kernels.start_kernel(kernel_name="python3", env=env, cwd=os.path.dirname(notebook))
        for _ in range(count)
    ]
    for kernel_id in started:
        manager = kernels.get_kernel(kernel_id)
        printed = run(manager, cells)
        print("ran", len(cells), "cells in", manager.connection_file, *printed, flush=True)
    print("ready", flush=True)

    def stop(*_: object) -> None:
        kernels.shutdown_all(now=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
