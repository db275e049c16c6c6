"""The import smoke test run by the probe's own process (``--with-family-imports``, --deep):
the document it carries is read like the rest of the probe's output, and a probe the smoke test
kills falls back to the probe alone and the smoke test by itself."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from builders import BROKEN_EXTENSION, fake_distribution
from test_probe_output import document, encode

from lockd.errors import ProbeError
from lockd.evidence.smoke import observe, with_family_imports
from lockd.evidence.targets.base import parse_probe_document
from lockd.evidence.targets.local import LocalTarget
from lockd.model.environment import FamilyImport

SOURCE = "container web-1"
TORCH_OK = {"name": "torch", "version": "2.11.0", "module": "torch", "op": "torch.add", "ok": True}


def carrying(imports: object) -> bytes:
    value = copy.deepcopy(document())
    value["family_imports"] = imports
    return encode(value)


def test_the_probe_carries_the_smoke_test() -> None:
    report, imports = parse_probe_document(
        carrying({"python": "/usr/bin/python3", "results": [TORCH_OK]}),
        SOURCE,
        family_imports=True,
    )
    assert [d.name for d in report.distributions] == ["numpy", "torch"]
    assert imports is not None and imports.error is None
    assert imports.results == [FamilyImport.model_validate(TORCH_OK)]


def test_unasked_the_document_is_refused() -> None:
    with pytest.raises(ProbeError) as caught:
        parse_probe_document(carrying({"python": "/py", "results": []}), SOURCE)
    assert str(caught.value) == (
        "container web-1: probe output failed validation: family_imports: Extra inputs are not "
        "permitted; the probe and this lockd may differ in version, or the target is tampered "
        "with"
    )
    assert caught.value.exit_code == 3


NOT_A_RESULT = "container web-1: the probe printed a family_imports that is not a smoke test result"
BAD: list[tuple[str, Any, str]] = [
    ("missing", ..., "container web-1: the probe printed no smoke test result"),
    ("null", None, "container web-1: the probe printed no smoke test result"),
    (
        "a list",
        [],
        f"{NOT_A_RESULT} ((document): Input should be a valid dictionary or instance "
        "of FamilyImports)",
    ),
    (
        "python not a string",
        {"python": 1},
        f"{NOT_A_RESULT} (python: Input should be a valid string)",
    ),
    (
        "ok not a boolean",
        {"python": "/py", "results": [{**TORCH_OK, "ok": "yes"}]},
        f"{NOT_A_RESULT} (results.0.ok: Input should be a valid boolean)",
    ),
    (
        "too many results",
        {"python": "/py", "results": [TORCH_OK] * 65},
        f"{NOT_A_RESULT} (results: List should have at most 64 items after validation, not 65)",
    ),
    (
        "a name too long",
        {"python": "/py", "results": [{**TORCH_OK, "name": "t" * 300}]},
        f"{NOT_A_RESULT} (results.0.name: String should have at most 256 characters)",
    ),
    (
        "an error too long",
        {"python": "/py", "results": [{**TORCH_OK, "ok": False, "error": "e" * 5000}]},
        f"{NOT_A_RESULT} (results.0.error: String should have at most 4096 characters)",
    ),
    (
        "an unknown key",
        {"python": "/py", "results": [], "passed": True},
        f"{NOT_A_RESULT} (passed: Extra inputs are not permitted)",
    ),
]


@pytest.mark.parametrize(("value", "error"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_bad_smoke_test_result_becomes_its_error(value: object, error: str) -> None:
    output = encode(document()) if value is ... else carrying(value)
    report, imports = parse_probe_document(output, SOURCE, family_imports=True)
    assert report.probe_version == 1  # the probe's own report still counts
    assert imports is not None
    assert (imports.python, imports.results, imports.error) == ("/usr/bin/python3", [], error)


def test_the_probe_runs_the_smoke_test_in_a_local_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_distribution(tmp_path, "torchaudio", "2.9.1", BROKEN_EXTENSION)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    target = LocalTarget(sys.executable)
    observed = observe(target)
    imports = observed.family_imports
    assert imports is not None and imports.error is None
    assert with_family_imports(target, observed) is observed  # no second run
    # the same document as the smoke test run by itself
    alone = with_family_imports(target, target.observe()).family_imports
    assert alone is not None
    assert imports == alone
    [audio] = [r for r in imports.results if r.name == "torchaudio"]
    assert (audio.ok, audio.op) == (False, "torchaudio.functional.lfilter")
    assert audio.error is not None and "(caused by OSError: libtorch_cuda.so" in audio.error
    # the probe's record is the one it makes without the smoke test: the libraries of `import
    # torch` alone (the smoke test comes after it); the target itself is left as it was (the
    # options were passed in, never set on it)
    again = target.observe()
    plain = again.probe
    assert again.family_imports is None
    assert observed.probe is not None and plain is not None
    assert untimed(observed.probe.model_dump()) == untimed(plain.model_dump())


def untimed(value: Any) -> Any:
    """A dumped report without its timings (``seconds``)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def test_a_smoke_test_that_kills_the_probe_is_run_again_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_distribution(tmp_path, "torchvision", "0.21.0", "import os\nos.abort()\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    target = LocalTarget(sys.executable)
    observed = observe(target)
    assert observed.probe is not None and observed.family_imports is None
    imports = with_family_imports(target, observed).family_imports
    assert imports is not None and imports.results == [] and imports.error is not None
    assert "killed by signal 6" in imports.error
    assert "lockd: importing torchvision 0.21.0" in imports.error


def test_no_family_no_smoke_test_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONPATH", raising=False)  # an empty venv: nothing from outside
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True
    )
    observed = observe(LocalTarget(str(tmp_path / "venv" / "bin" / "python")))
    assert observed.probe is not None and observed.probe.distributions == []
    assert observed.family_imports is None
