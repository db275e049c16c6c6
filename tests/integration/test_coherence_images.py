"""PyTorch-family coherence end to end: an image with torch 2.13.0 and a torchaudio built for
torch 2.9.1 is refused by `record` and fails `coherence` in `verify` (with `--deep`, the import
error itself); `lockd lock` against the real package index holds the family to its torch and
refuses an explicit pin that cannot fit; uv and pip-tools write the same lock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

IMAGES = Path(__file__).resolve().parent.parent / "assets" / "images"
DEFAULT_WHEELS = "/var/cache/lockd/wheels"
TORCHAUDIO = "torchaudio-2.9.1-cp311-cp311-manylinux_2_28_x86_64.whl"
SETUP = "run scripts/setup (as root) to prepare this machine"
MISMATCH = "torchaudio 2.9.1 is built for torch==2.9.1, not torch 2.13.0+cpu"
Lockd = Callable[..., subprocess.CompletedProcess[str]]  # the `lockd` fixture (tests/conftest.py)


@pytest.fixture(scope="module")
def incoherent_image(
    docker_client: Any, torch_cpu_image: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """tests/assets/images/incoherent on top of the torch-cpu image: torch 2.13.0+cpu with
    torchaudio 2.9.1 (built for torch 2.9.1) installed --no-deps."""
    from docker.errors import BuildError

    default = Path(os.environ.get("LOCKD_WHEELS") or DEFAULT_WHEELS).parent / "incoherent"
    wheels = Path(os.environ.get("LOCKD_INCOHERENT_WHEELS") or default)
    if not (wheels / TORCHAUDIO).is_file():
        pytest.fail(f"no {TORCHAUDIO} in {wheels} (LOCKD_INCOHERENT_WHEELS); {SETUP}")
    context = tmp_path_factory.mktemp("image-incoherent")
    shutil.copytree(IMAGES / "incoherent", context, dirs_exist_ok=True)
    (context / "wheels").mkdir()
    shutil.copy2(wheels / TORCHAUDIO, context / "wheels" / TORCHAUDIO)
    tag = "lockd-test/incoherent:latest"
    try:
        docker_client.images.build(
            path=str(context),
            tag=tag,
            buildargs={"BASE": torch_cpu_image},
            pull=False,
            rm=True,
            forcerm=True,
            network_mode="none",
            labels={"lockd.test": "1"},
        )
    except BuildError as e:
        log = "".join(str(line.get("stream", line.get("error", ""))) for line in e.build_log)
        pytest.fail(f"building the incoherent test image failed: {e.msg}\n{log[-4000:]}")
    return tag


def coherence(report: dict[str, Any]) -> dict[str, Any]:
    [found] = [c for c in report["checks"] if c["id"] == "coherence"]
    return found


def verify_json(lockd: Lockd, *args: str | Path) -> tuple[int, dict[str, Any]]:
    result = lockd("verify", *args, "--json")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


# --- record and verify against the incoherent image ------------------------------------------


@pytest.mark.parametrize("deep", [False, True], ids=["rules", "deep"])
def test_record_refuses_an_incoherent_family_and_writes_nothing(
    incoherent_image: str, keypair: tuple[Path, Path], tmp_path: Path, deep: bool, lockd: Lockd
) -> None:
    out = tmp_path / "incoherent.dsse.json"
    args = ["record", f"image:{incoherent_image}", "--key", keypair[0], "-o", out]
    result = lockd(*args, *(["--deep"] if deep else []))
    assert result.returncode == 1, result.stdout + result.stderr
    error = " ".join(result.stderr.split())
    assert "refusing to sign: its PyTorch family does not fit its torch" in error
    assert MISMATCH in error
    assert "lockd's data has no torchaudio release for torch 2.13.0" in error
    assert "--allow-incoherent" in error
    if deep:  # the import smoke test adds what the target itself says
        assert "import torchaudio and torchaudio.functional.lfilter: OSError" in error
        assert "libtorchaudio.so" in error
        assert "libtorch_cuda.so" in error
    else:
        assert "import torchaudio" not in error
    assert not out.exists()


def test_verify_fails_coherence_and_deep_shows_the_import_error(
    incoherent_image: str, keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd
) -> None:
    manifest = tmp_path / "incoherent.dsse.json"
    target = f"image:{incoherent_image}"
    result = lockd("record", target, "--key", keypair[0], "-o", manifest, "--allow-incoherent")
    assert result.returncode == 0, result.stderr

    code, report = verify_json(lockd, target, "--manifest", manifest, "--key", keypair[1])
    assert code == 1
    failing = {c["id"] for c in report["checks"] if c["status"] == "fail"}
    assert failing == {"coherence"}  # the image is the recorded one: only its family is wrong
    check = coherence(report)
    assert check["evidence"] == "inside"
    assert "import smoke test not run" in check["message"]
    [finding] = check["findings"]
    assert finding["kind"] == "mismatch"
    assert (finding["name"], finding["observed"], finding["expected"]) == (
        "torchaudio",
        "2.9.1",
        "none",
    )
    assert MISMATCH in finding["message"]
    assert "METADATA: Requires-Dist: torch==2.9.1" in finding["message"]

    code, report = verify_json(lockd, target, "--manifest", manifest, "--key", keypair[1], "--deep")
    assert code == 1
    check = coherence(report)
    assert "import smoke test: 1 of 2 imported" in check["message"]
    imports = [f for f in check["findings"] if f["kind"] == "import"]
    assert [(f["name"], f["observed"]) for f in imports] == [("torchaudio", "2.9.1")]
    message = imports[0]["message"]
    assert message.startswith("import torchaudio and torchaudio.functional.lfilter: OSError")
    assert "Could not load this library" in message
    assert "libtorch_cuda.so: cannot open shared object file" in message


def test_the_smoke_test_runs_in_a_running_container(
    incoherent_image: str, run_container: Callable[..., Any]
) -> None:
    from lockd.evidence.smoke import with_family_imports
    from lockd.evidence.targets.select import open_target

    container = run_container(incoherent_image)
    target = open_target(f"container:{container.name}")
    imports = with_family_imports(target, target.observe()).family_imports
    assert imports is not None and imports.error is None
    assert imports.python == "/opt/venv/bin/python3"
    assert [(r.name, r.version, r.ok) for r in imports.results] == [
        ("torch", "2.13.0+cpu", True),
        ("torchaudio", "2.9.1", False),
    ]
    assert "libtorch_cuda.so: cannot open shared object file" in (imports.results[1].error or "")


def test_a_coherent_torch_image_passes_coherence_with_the_import_smoke_test(
    torch_cpu_image: str, keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd
) -> None:
    manifest = tmp_path / "torch.dsse.json"
    target = f"image:{torch_cpu_image}"
    result = lockd("record", target, "--key", keypair[0], "-o", manifest)
    assert result.returncode == 0, result.stderr
    code, report = verify_json(lockd, target, "--manifest", manifest, "--key", keypair[1], "--deep")
    assert code == 0, report
    check = coherence(report)
    assert check["status"] == "pass"
    assert check["message"].startswith("torch 2.13.0+cpu: coherent")
    assert "import smoke test: 1 of 1 imported" in check["message"]


# --- lockd lock against the real package index ------------------------------------------------

TARGET = ("--python-version", "3.11", "--platform", "manylinux_2_28_x86_64")


def pins(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line and not line.startswith((" ", "#", "-")):
            name, _, version = line.split(" ")[0].partition("==")
            found[name] = version
    return found


def test_lock_holds_unpinned_family_members_to_the_pinned_torch(
    tmp_path: Path, lockd: Lockd
) -> None:
    source = tmp_path / "requirements.in"
    source.write_text("torch==2.6.0\ntorchvision\ntorchaudio\n")
    out = tmp_path / "requirements.txt"
    result = lockd("lock", source, *TARGET, "--resolver", "uv")
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    locked = pins(text)
    assert locked["torch"] == "2.6.0"
    assert locked["torchaudio"] == "2.6.0"  # not 2.11.0, which declares no torch dependency
    assert locked["torchvision"] == "0.21.0"
    assert locked["triton"] == "3.2.0"
    assert locked["nvidia-cudnn-cu12"] == "9.1.0.70"
    assert "#   resolver: uv " in text
    assert "#   constraints: torchaudio==2.6.0 torchvision==0.21.0 (lockd: " in text
    assert "added the constraint torchaudio==2.6.0" in result.stdout
    assert str(tmp_path) not in text  # the constraints file is named, not its temporary path


def test_an_explicit_incoherent_pin_is_refused_naming_both_and_the_fit(
    tmp_path: Path, lockd: Lockd
) -> None:
    source = tmp_path / "requirements.in"
    source.write_text("torch==2.6.0\ntorchaudio==2.5.1\n")
    result = lockd("lock", source, *TARGET)
    assert result.returncode == 2
    error = " ".join(result.stderr.split())
    assert f"{source}: torchaudio==2.5.1 does not fit torch==2.6.0" in error
    assert "torchaudio 2.6.0 fits torch 2.6.0: pin torchaudio==2.6.0" in error
    assert "nothing written" in error
    assert not (tmp_path / "requirements.txt").exists()


def test_uv_and_pip_tools_write_the_same_lock(tmp_path: Path, lockd: Lockd) -> None:
    source = tmp_path / "requirements.in"
    source.write_text("six==1.16.0\nrequests==2.32.3\n")
    texts = {}
    for resolver in ("uv", "pip-tools"):
        out = tmp_path / f"{resolver}.txt"
        result = lockd("lock", source, "--resolver", resolver, "-o", out)
        assert result.returncode == 0, result.stderr
        assert f"(resolved by {resolver})" in " ".join(result.stdout.split())
        texts[resolver] = out.read_text()
    assert "#   resolver: uv " in texts["uv"]
    assert "#   resolver: pip-tools " in texts["pip-tools"]

    def without_resolver(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("#   resolver: ")]

    assert without_resolver(texts["uv"]) == without_resolver(texts["pip-tools"])
    assert "requests==2.32.3 \\\n    --hash=sha256:" in texts["uv"]
    assert "    # via requests\n" in texts["uv"]
