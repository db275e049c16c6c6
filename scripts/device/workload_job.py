"""A small PyTorch training job that keeps running: the workload scripts/device/workload_gpu.sh
records and verifies as ``process:PID`` (#17).

On the GPU it first joins a one-rank NCCL process group and all-reduces a tensor (so libnccl is
loaded and initialised, when it loads at all), then trains a small convolutional network for a
few steps (cuDNN's convolution and batch-norm kernels: its sub-libraries load) with a linear
layer and a matrix product (cuBLAS and cuBLASLt). It prints one JSON line (what it loaded, the
losses), then sleeps until it is killed. ``--device cpu`` runs the same steps on the CPU (the
script's test run on a machine without a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _nccl(rendezvous: str) -> str:
    """A one-rank NCCL process group and one all-reduce; what happened, in words."""
    import torch as t

    try:
        import datetime

        import torch.distributed as dist

        t.cuda.set_device(0)
        dist.init_process_group(
            "nccl",
            init_method=f"file://{rendezvous}",
            rank=0,
            world_size=1,
            timeout=datetime.timedelta(seconds=120),
        )
        value = t.ones(4, device="cuda")
        dist.all_reduce(value)
        t.cuda.synchronize()
        found = t.cuda.nccl.version()
        version = ".".join(map(str, found)) if isinstance(found, tuple) else str(found)
        return f"ok: a one-rank all-reduce gave {value.tolist()} (NCCL {version})"
    except Exception as e:  # reported, and the job runs on without NCCL
        return f"failed: {type(e).__name__}: {e}"[:500]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--rendezvous", default=f"/tmp/lockd-job-{os.getpid()}.pg")  # noqa: S108
    args = parser.parse_args()

    import torch
    from torch import nn

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("workload_job: --device cuda, but torch sees no GPU")
    nccl = _nccl(args.rendezvous) if device.type == "cuda" else "not tried (CPU)"
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    inputs = torch.randn(64, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (64,), device=device)
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(round(loss.item(), 6))
    product = torch.randn(512, 512, device=device) @ torch.randn(512, 512, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(
        json.dumps(
            {
                "ready": True,
                "pid": os.getpid(),
                "python": sys.executable,
                "torch": torch.__version__,
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
                "nccl": nccl,
                "losses": losses,
                "product_sum": round(product.sum().item(), 3),
            }
        ),
        flush=True,
    )
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
