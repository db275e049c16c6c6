"""PyTorch-family coherence without Docker or a network: the rules and their data, judging
installed or pinned sets, the constraints `lockd lock` adds, the `coherence` check, record's
refusal, and the probe's import smoke test run in this interpreter on real (tiny) packages."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from builders import BROKEN_EXTENSION, fake_distribution
from observations import dist, manifest, observation, probe

from lockd.errors import InputError, RefusedError
from lockd.evidence.smoke import parse_family_imports, run_family_imports, with_family_imports
from lockd.evidence.targets.local import LocalTarget
from lockd.judgement.checks.coherence import check_coherence
from lockd.judgement.coherence import (
    FAMILY,
    Constraints,
    IncoherentPinError,
    evaluate,
    fitting,
    in_constraints,
    platform_environment,
    retry_constraints,
    rule_for,
    variant_of,
)
from lockd.judgement.coherence_data import DECLARED, OVERRIDES, TORCH_RELEASES
from lockd.judgement.compare import compare, verified
from lockd.judgement.policy import Checks, Policy
from lockd.lock import choose_resolver, in_requirements, render_header
from lockd.model.environment import FamilyImport, FamilyImports
from lockd.model.manifest import Observation
from lockd.probe.environment import family_import
from lockd.record import require_coherent

LINUX = platform_environment("3.11", "manylinux_2_28_x86_64")
ARM = platform_environment("3.11", "manylinux_2_28_aarch64")
STRICT = Policy()


# --- the data ---------------------------------------------------------------------------------


def test_the_data_covers_torch_2_0_to_2_15_with_each_default_variant() -> None:
    versions = [r.version for r in TORCH_RELEASES]
    assert versions[0] == "2.0.0"
    assert versions[-1] == "2.15.0"
    assert {"2.5.1", "2.6.0", "2.9.1", "2.13.0", "2.14.1"} <= set(versions)
    variants = {r.version: r.variant for r in TORCH_RELEASES}
    # cross-checked with the CUDA facts table (CUDA 12.4 for 2.5.1 and 2.6.0, 13.0 for 2.11)
    assert variants["2.4.1"] == "cu121"
    assert variants["2.6.0"] == "cu124"
    assert variants["2.7.1"] == "cu126"
    assert variants["2.10.0"] == "cu128"
    assert variants["2.11.0"] == variants["2.14.1"] == "cu130"
    for release in TORCH_RELEASES:
        assert release.wheel.startswith(f"torch-{release.version}-")  # 2.10.0 has build 3
        assert "-cp311-cp311-" in release.wheel


def test_every_rule_names_its_source() -> None:
    for name, version, declared, tags in DECLARED:
        rule = rule_for(name, version)
        if declared is None and (name, version) not in OVERRIDES:
            assert rule is None or name in ("torchaudio", "torchvision")
            continue
        assert rule is not None
        assert rule.source.startswith(f"{name}-{version}-{tags}.whl")
    assert "declares no torch requirement" in rule_for("torchaudio", "2.11.0").source  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("torch", "torchvision", "torchaudio", "triton"),
    [
        ("2.4.1", "0.19.1", "2.4.1", "==3.0.0"),
        ("2.5.1", "0.20.1", "2.5.1", "==3.1.0"),
        ("2.6.0", "0.21.0", "2.6.0", "==3.2.0"),
        ("2.7.1", "0.22.1", "2.7.1", "==3.3.1"),
        ("2.9.1", "0.24.1", "2.9.1", "==3.5.1"),
        ("2.11.0", "0.26.0", "2.11.0", "==3.6.0"),
        ("2.13.0", "0.28.0", None, "==3.7.1"),
        ("2.14.1", "0.29.2", None, "~=3.8.0"),
    ],
)
def test_the_family_of_each_torch(
    torch: str, torchvision: str, torchaudio: str | None, triton: str
) -> None:
    assert fitting("torchvision", torch).version == torchvision  # type: ignore[union-attr]
    assert fitting("torchaudio", torch).version == torchaudio  # type: ignore[union-attr]
    [release] = [r for r in TORCH_RELEASES if r.version == torch]
    assert [req for req, _ in release.requires if req.startswith("triton")] == [f"triton{triton}"]
    versions = {"torch": torch, "torchvision": torchvision, "triton": triton.lstrip("=~")}
    if torchaudio:
        versions["torchaudio"] = torchaudio
    assert evaluate(versions, LINUX) == []


def test_releases_newer_than_the_data_follow_the_release_pattern() -> None:
    assert fitting("torchaudio", "2.16.0").version == "2.16.0"  # type: ignore[union-attr]
    assert fitting("torchvision", "2.16.1").version == "0.31.1"  # type: ignore[union-attr]
    assert "release pattern" in rule_for("torchvision", "0.31.0").source  # type: ignore[union-attr]
    assert evaluate({"torch": "2.16.0", "torchvision": "0.31.0", "torchaudio": "2.16.0"}) == []
    [problem] = evaluate({"torch": "2.16.0", "torchvision": "0.30.0"})
    assert (problem.kind, problem.expected) == ("mismatch", "0.31.0")


def test_members_without_a_rule_and_open_rules() -> None:
    assert fitting("numpy", "2.6.0") is None
    assert "flash-attn" not in FAMILY  # an sdist built against the installed torch: no rule
    torchdata = fitting("torchdata", "2.6.0")
    assert torchdata is not None and torchdata.version == "0.11.0" and not torchdata.exact


# --- judging a set of distributions -----------------------------------------------------------


@pytest.mark.parametrize(
    ("versions", "environment", "kind", "name", "expected", "fragment"),
    [
        (  # the case: what every resolver gives for torch==2.6.0 + torchaudio
            {"torch": "2.6.0", "torchaudio": "2.11.0"},
            LINUX,
            "mismatch",
            "torchaudio",
            "2.6.0",
            "torchaudio 2.11.0 is built for torch==2.11.0, not torch 2.6.0; torchaudio 2.6.0 "
            "fits torch 2.6.0",
        ),
        (
            {"torch": "2.13.0+cpu", "torchaudio": "2.9.1"},
            LINUX,
            "mismatch",
            "torchaudio",
            "none",
            "lockd's data has no torchaudio release for torch 2.13.0 (the newest, 2.11.0, is "
            "built for torch==2.11.0)",
        ),
        (
            {"torch": "2.6.0+cu124", "torchvision": "0.20.1+cu124"},
            LINUX,
            "mismatch",
            "torchvision",
            "0.21.0+cu124",
            "torchvision 0.21.0+cu124 fits torch 2.6.0+cu124",
        ),
        (
            {"torch": "2.6.0+cu124", "torchvision": "0.21.0+cpu"},
            LINUX,
            "variant",
            "torchvision",
            "cu124",
            "torchvision 0.21.0+cpu is the cpu build, torch 2.6.0+cu124 the cu124 build",
        ),
        (  # an unlabelled wheel from the index is its torch release's CUDA default
            {"torch": "2.6.0+cpu", "torchaudio": "2.6.0"},
            LINUX,
            "variant",
            "torchaudio",
            "cpu",
            "torchaudio 2.6.0 is the cu124 build, torch 2.6.0+cpu the cpu build",
        ),
        (
            {"torch": "2.6.0", "nvidia-cudnn-cu12": "9.1.0.17"},
            LINUX,
            "requirement",
            "nvidia-cudnn-cu12",
            "==9.1.0.70",
            "torch 2.6.0 requires nvidia-cudnn-cu12==9.1.0.70, 9.1.0.17 is installed",
        ),
        (
            {"torch": "2.6.0", "triton": "3.1.0"},
            LINUX,
            "requirement",
            "triton",
            "==3.2.0",
            "torch 2.6.0 requires triton==3.2.0, 3.1.0 is installed",
        ),
        (
            {"torch": "2.6.0", "torchtext": "0.18.0"},
            LINUX,
            "mismatch",
            "torchtext",
            "none",
            "torchtext 0.18.0 is built for torch==2.3.0, not torch 2.6.0",
        ),
        (
            {"torch": "2.15.0", "torchvision": "0.29.2"},  # declares torch>=2.14.0 only
            LINUX,
            "mismatch",
            "torchvision",
            "none",
            "torchvision 0.29.2 is built for torch==2.14.*, not torch 2.15.0",
        ),
        (
            {"torch": "2.5.1", "xformers": "0.0.29.post3"},
            LINUX,
            "mismatch",
            "xformers",
            "0.0.29.post1",
            "xformers 0.0.29.post3 is built for torch==2.6.0",
        ),
    ],
)
def test_incoherent_sets_say_what_does_not_fit_and_what_would(
    versions: dict[str, str],
    environment: dict[str, str],
    kind: str,
    name: str,
    expected: str,
    fragment: str,
) -> None:
    [problem] = evaluate(versions, environment)
    assert (problem.kind, problem.name, problem.expected) == (kind, name, expected)
    assert fragment in problem.message
    assert problem.source


@pytest.mark.parametrize(
    ("versions", "environment"),
    [
        ({"torch": "2.6.0+cpu", "torchaudio": "2.6.0"}, ARM),  # off x86_64 the index is CPU
        ({"torch": "2.6.0+cu118", "nvidia-cudnn-cu11": "9.1.0.70"}, LINUX),  # another build
        ({"torch": "2.11.0", "nvidia-nccl-cu13": "2.28.9", "cuda-toolkit": "13.0.2"}, LINUX),
        ({"torch": "2.6.0", "nvidia-cudnn-cu12": "8.9.2.26"}, ARM),  # marker: x86_64 only
        ({"torchaudio": "2.11.0"}, LINUX),  # no torch: nothing to judge
    ],
)
def test_what_is_not_a_problem(versions: dict[str, str], environment: dict[str, str]) -> None:
    assert evaluate(versions, environment) == []


def test_variants_need_a_label_or_linux_x86_64() -> None:
    assert variant_of("torch", "2.6.0+rocm6.2", None) == "rocm6.2"
    assert variant_of("torch", "2.6.0", LINUX) == "cu124"
    assert variant_of("torchvision", "0.21.0", LINUX) == "cu124"
    assert variant_of("torch", "2.6.0", ARM) is None
    assert variant_of("torch", "2.6.0", None) is None


# --- the constraints lockd lock adds -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        (
            "torch==2.6.0\ntorchvision\ntorchaudio\nnumpy\n",
            ("torchaudio==2.6.0", "torchvision==0.21.0"),
        ),
        ("torch==2.6.0+cu124\ntorchaudio\n", ("torchaudio==2.6.0+cu124",)),
        ("torch\ntorchaudio==2.11.0\n", ("torch==2.11.0",)),
        ("torch==2.6.0\ntorchaudio==2.6.0\n", ()),  # pinned and fitting: nothing to add
        ("torch>=2.5\ntorchaudio\n", ()),  # left to the check after resolving
        ("torch==2.6.0\ntorchdata\n", ()),  # an open rule: any newer torchdata fits too
        ("numpy\n", ()),
    ],
)
def test_constraints_for_a_requirements_in(text: str, lines: tuple[str, ...]) -> None:
    assert in_constraints(in_requirements(text)).lines == lines


def test_reading_a_requirements_in_skips_options_urls_and_garbage() -> None:
    text = (
        "torch==2.6.0  # the pin\n-r other.in\n--index-url https://index.invalid/simple\n"
        "torchaudio[ffmpeg] ; python_version > '3'\nPillow>=10 \\\n  ,<12\n"
        "lib @ https://files.invalid/lib-1.0.tar.gz\nnot a requirement!\n"
    )
    assert in_requirements(text) == {"torch": "==2.6.0", "torchaudio": "", "pillow": "<12,>=10"}


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            "torch==2.6.0\ntorchaudio==2.5.1\n",
            [
                "torchaudio==2.5.1 does not fit torch==2.6.0",
                "torchaudio 2.5.1 is built for torch==2.5.1",
                "torchaudio 2.6.0 fits torch 2.6.0: pin torchaudio==2.6.0",
            ],
        ),
        (
            "torch==2.6.0+cu124\ntorchvision==0.20.1\n",
            [
                "torchvision==0.20.1 does not fit torch==2.6.0+cu124",
                "pin torchvision==0.21.0+cu124",
            ],
        ),
        (
            "torch==2.13.0\ntorchaudio\n",
            [
                "torchaudio cannot fit torch==2.13.0",
                "the newest, 2.11.0, is built for torch==2.11.0",
                "remove torchaudio or pin a torch it is built for",
            ],
        ),
        (
            "torch\ntorchaudio==2.6.0\ntorchvision==0.20.1\n",
            [
                "torchaudio==2.6.0 is built for torch==2.6.0, torchvision==0.20.1 for "
                "torch==2.5.1: they cannot be installed together",
            ],
        ),
    ],
)
def test_incoherent_pins_are_refused(text: str, fragments: list[str]) -> None:
    with pytest.raises(IncoherentPinError) as caught:
        in_constraints(in_requirements(text))
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_a_resolution_that_strays_is_constrained_again_except_what_the_in_pins() -> None:
    problems = evaluate({"torch": "2.6.0", "torchaudio": "2.11.0", "torchvision": "0.20.1"})
    again = retry_constraints(problems, pinned=["torchvision"])
    assert again == Constraints(("torchaudio==2.6.0",))
    assert "the resolver chose 2.11.0" in again.reasons[0]


def test_an_explicit_incoherent_pin_is_refused_before_resolving(tmp_path: Path) -> None:
    from lockd.lock import LockRequest, compile_lock

    source = tmp_path / "requirements.in"
    source.write_text("torch==2.6.0\ntorchaudio==2.5.1\n")
    request = LockRequest(source, platform="not a tag!")  # nothing may run: no network
    with pytest.raises(InputError, match="give a wheel platform tag"):
        compile_lock(request)
    with pytest.raises(InputError) as caught:
        compile_lock(LockRequest(source, python_version="3.10", resolver="uv"))
    message = str(caught.value)
    assert message.startswith(f"{source}: torchaudio==2.5.1 does not fit torch==2.6.0")
    assert message.endswith("nothing written")
    assert not (tmp_path / "requirements.txt").exists()


@pytest.mark.parametrize(
    ("requested", "native", "fragment"),
    [
        ("poetry", True, "--resolver poetry: lockd resolves with uv or pip-tools"),
        ("pip-tools", False, "--resolver pip-tools resolves only for the interpreter it runs in"),
    ],
)
def test_bad_resolver_choices(requested: str, native: bool, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        choose_resolver(requested, native)


def test_the_default_resolver_is_uv_when_installed() -> None:
    backend, uv = choose_resolver(None, native=True)
    assert (backend, Path(uv or "").name) == ("uv", "uv")  # uv is a dependency of lockd
    assert choose_resolver("pip-tools", native=True) == ("pip-tools", None)


def test_the_header_records_the_constraints_added() -> None:
    header = render_header(
        source=Path("requirements.in"),
        source_sha256="0" * 64,
        resolver="uv 0.13.9",
        python="3.11",
        resolved_as="3.11.7",
        platform="manylinux_2_28_x86_64",
        index_url="https://index.invalid/simple",
        extra_index_urls=[],
        options=["--generate-hashes"],
        constraints=["torchaudio==2.6.0", "torchvision==0.21.0"],
    )
    assert (
        "#   constraints: torchaudio==2.6.0 torchvision==0.21.0 (lockd: the PyTorch family"
        in header
    )


# --- the coherence check and record's refusal ----------------------------------------------


def family_observation(
    *dists: tuple[str, str], imports: FamilyImports | None = None
) -> Observation:
    report = probe(distributions=[dist(n, v) for n, v in dists])
    return observation(report=report, family_imports=imports)


INCOHERENT = (("torch", "2.13.0+cpu"), ("torchaudio", "2.9.1"))
IMPORT_ERROR = FamilyImports(
    python="/opt/venv/bin/python3",
    results=[
        FamilyImport(name="torch", version="2.13.0+cpu", module="torch", op="torch.add", ok=True),
        FamilyImport(
            name="torchaudio",
            version="2.9.1",
            module="torchaudio",
            op="torchaudio.functional.lfilter",
            ok=False,
            error="OSError: Could not load this library: libtorchaudio.so (caused by OSError: "
            "libtorch_cuda.so: cannot open shared object file)",
        ),
    ],
)


def test_the_check_skips_without_torch_and_passes_a_coherent_family() -> None:
    skipped = check_coherence(observation(), STRICT)
    assert (skipped.status, skipped.message) == (
        "skip",
        "torch is not installed: no PyTorch family to judge",
    )
    coherent = family_observation(("torch", "2.6.0"), ("torchvision", "0.21.0"), ("numpy", "2.2"))
    check = check_coherence(coherent, STRICT)
    assert check.status == "pass"
    assert check.message == (
        "torch 2.6.0 with torchvision 0.21.0: coherent; import smoke test not run (--deep runs it)"
    )


def test_the_check_fails_with_the_rules_and_the_import_error() -> None:
    checks = compare(manifest(), family_observation(*INCOHERENT, imports=IMPORT_ERROR), STRICT)
    [check] = [c for c in checks if c.id == "coherence"]
    assert (check.id, check.status, check.evidence) == ("coherence", "fail", "inside")
    assert [(f.kind, f.name, f.expected, f.observed) for f in check.findings] == [
        ("mismatch", "torchaudio", "none", "2.9.1"),
        ("import", "torchaudio", None, "2.9.1"),
    ]
    assert check.findings[1].message == (
        "import torchaudio and torchaudio.functional.lfilter: OSError: Could not load this "
        "library: libtorchaudio.so (caused by OSError: libtorch_cuda.so: cannot open shared "
        "object file)"
    )
    assert "import smoke test: 1 of 2 imported" in check.message
    assert not verified(checks)


def test_the_check_warns_or_is_ignored_by_policy() -> None:
    seen = family_observation(*INCOHERENT)
    assert check_coherence(seen, Policy(checks=Checks(coherence="warn"))).status == "warn"
    assert check_coherence(seen, Policy(checks=Checks(coherence="ignore"))).status == "skip"


def test_a_failed_smoke_test_is_a_finding() -> None:
    crashed = FamilyImports(python="/usr/bin/python3", error="probe was killed by signal 11")
    check = check_coherence(family_observation(("torch", "2.6.0"), imports=crashed), STRICT)
    assert check.status == "fail"
    [finding] = check.findings
    assert finding.message == "the import smoke test failed: probe was killed by signal 11"


def test_record_refuses_an_incoherent_family_listing_each_finding() -> None:
    with pytest.raises(RefusedError) as caught:
        require_coherent(family_observation(*INCOHERENT, imports=IMPORT_ERROR))
    message = str(caught.value)
    assert message.startswith(
        "container:app-1: refusing to sign: its PyTorch family does not fit its torch "
        "(2 finding(s)):\n  mismatch    torchaudio 2.9.1 is built for torch==2.9.1"
    )
    assert "\n  import      import torchaudio and torchaudio.functional.lfilter" in message
    assert message.endswith("or record with --allow-incoherent")
    require_coherent(family_observation(("torch", "2.6.0"), ("torchaudio", "2.6.0")))


# --- the import smoke test, run by this interpreter on real packages -------------------------


def test_family_import_reports_the_exception_its_cause_and_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_distribution(tmp_path, "torchtext", "0.18.0", BROKEN_EXTENSION)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = family_import("torchtext", "0.18.0", "torchtext", "torchtext.vocab.vocab", None)
    assert result == {
        "name": "torchtext",
        "version": "0.18.0",
        "module": "torchtext",
        "op": "torchtext.vocab.vocab",
        "ok": False,
        "error": "OSError: Could not load this library: lib/libext.so (caused by OSError: "
        "libtorch_cuda.so: cannot open shared object file); warnings: UserWarning: "
        "loading the compiled extension",
    }
    sys.modules.pop("torchtext", None)


def test_the_smoke_test_runs_in_a_local_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_distribution(tmp_path, "torchaudio", "2.9.1", BROKEN_EXTENSION)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    target = LocalTarget(sys.executable)
    observed = with_family_imports(target, target.observe())
    imports = observed.family_imports
    assert imports is not None and imports.error is None
    assert imports.python == sys.executable
    [audio] = [r for r in imports.results if r.name == "torchaudio"]
    assert (audio.module, audio.op, audio.ok) == (
        "torchaudio",
        "torchaudio.functional.lfilter",
        False,
    )
    assert audio.error is not None and "(caused by OSError: libtorch_cuda.so" in audio.error
    # torch is imported first where this interpreter has it (a lone torch imports fine)
    assert [r.name for r in imports.results if r.name != "torchaudio"] == (
        ["torch"] if any(d.name == "torch" for d in observed.probe.distributions) else []  # type: ignore[union-attr]
    )
    assert all(r.ok for r in imports.results if r.name == "torch")


def test_a_crash_in_the_smoke_test_is_evidence_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_distribution(tmp_path, "torchvision", "0.21.0", "import os\nos.abort()\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    imports = run_family_imports(LocalTarget(sys.executable), sys.executable)
    assert imports.results == []
    assert imports.error is not None
    assert "killed by signal 6" in imports.error
    assert "lockd: importing torchvision 0.21.0" in imports.error  # where it died


def test_no_family_no_smoke_test() -> None:
    target = LocalTarget(sys.executable)
    seen = observation()
    assert with_family_imports(target, seen) is seen


def test_smoke_output_that_is_not_a_result_becomes_its_error() -> None:
    found = parse_family_imports(b'{"python": 1}', "container x (import smoke test)", "/py")
    assert found.results == []
    assert found.error is not None
    assert found.error.startswith("container x (import smoke test): printed something that is")
