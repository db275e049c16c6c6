"""What scripts/device/workload_gpu.sh found, for people (its summary.txt): the CUDA libraries the
recorded job mapped (versions, hashes), the GPU suite's result, and each verification's checks,
with the `workload` findings in full. Standard library only; reads what the script wrote:

    python3 scripts/device/workload_summary.py OUT_DIR COPIES_DIR
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"{path.name}: not read ({e})")
        return None


def manifest(path: Path) -> None:
    envelope = _load(path)
    if envelope is None:
        return
    statement = json.loads(base64.b64decode(envelope["payload"]))
    predicate = statement["predicate"]
    observation = predicate["observation"]
    print(f"== the record ({path.name}): target {observation['target']}")
    workload = observation.get("workload")
    if workload is None:
        print("   no workload in the manifest")
    else:
        print(
            f"   workload: {len(workload.get('processes', []))} process(es), "
            f"{len(workload.get('files', []))} distinct mapped files, {workload.get('hashed', 0)} "
            f"hashed ({workload.get('bytes', 0) / 1e6:.0f} MB); not examined: "
            f"{workload.get('not_examined')}"
        )
        print("   CUDA and driver libraries the job mapped (from the kernel's map_files):")
        for entry in workload.get("files", []):
            if entry.get("library_role") in ("cuda", "driver"):
                print(
                    f"     {entry['library']:<28} {entry.get('library_version') or '-':<12} "
                    f"sha256:{(entry.get('sha256') or '(not read)')[:16]}… "
                    f"{entry.get('size') or 0:>11} B  {entry['path']}"
                )
    probe = observation.get("probe") or {}
    torch = probe.get("torch") or {}
    if torch:
        print(
            f"   probe: torch {torch.get('version')}, CUDA {torch.get('cuda')}, cuDNN "
            f"{torch.get('cudnn')}, NCCL {torch.get('nccl')}, cuBLAS {torch.get('cublas')}"
        )
    for suite in predicate.get("gpu_suites", []):
        tests = suite.get("tests", [])
        ok = sum(1 for t in tests if t.get("status") == "ok")
        print(
            f"   GPU suite: {suite.get('device')} {suite.get('gpu_name') or ''}: "
            f"{ok}/{len(tests)} tests ok, signature {suite.get('signature', '')[:16]}…"
        )


def report(path: Path) -> None:
    document = _load(path)
    if document is None:
        return
    print(f"== {path.name}: verified {document.get('verified')}, target {document.get('target')}")
    for check in document.get("checks", []):
        print(f"   {check['id']:<11} {check['status']:<5} {check.get('message', '')}")
        if check["id"] == "workload" or check["status"] == "fail":
            for finding in check.get("findings", [])[:40]:
                shown = {k: v for k, v in finding.items() if v not in (None, "")}
                print(f"       {json.dumps(shown)}")


def main() -> None:
    out, copies = Path(sys.argv[1]), Path(sys.argv[2])
    manifest(out / "manifest.dsse.json")
    print()
    report(out / "verify-clean.json")
    print()
    if copies.is_dir():
        names = sorted(p.name for p in copies.iterdir())
        print(f"== the copies in {copies}: {', '.join(names) or '(none)'}")
    report(out / "verify-copy.json")


if __name__ == "__main__":
    main()
