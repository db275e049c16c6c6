"""The service's pages loaded from a running ``lockd serve`` in headless Chromium: their content
is checked in the DOM Chromium built, and each is saved as a screenshot (see page_fixtures)."""

from __future__ import annotations

import html
import json
import re
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from page_fixtures import Browser, Service, _lockd
from reference_manifests import manifest_a, manifest_b

from lockd.judgement.diffing import diff_manifests, render_text
from lockd.trust.checkpoint import LogSigner
from lockd.trust.statement import subjects_for


def _text(dom: str) -> str:
    """The DOM's text, tags dropped and whitespace collapsed."""
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())
    return re.sub(r" ([,;)])", r"\1", text)


def test_the_manifest_list_and_its_searches(service: Service, browser: Browser) -> None:
    dom = browser.dom(service.url + "/")
    assert f'href="/m/{service.digest_a}"' in dom and f'href="/m/{service.digest_b}"' in dom
    text = _text(dom)
    assert "experiment=baseline" in text and "2.11.0+cu130" in text
    browser.screenshot(service.url + "/", "list.png", height=900)

    def found(**query: str) -> set[str]:
        page = browser.dom(service.url + "/?" + urllib.parse.urlencode(query))
        return {d for d in (service.digest_a, service.digest_b) if f'href="/m/{d}"' in page}

    assert found(package="numpy==2.3.5") == {service.digest_b}
    assert found(package="nvidia-cudnn-cu12") == {service.digest_a}
    assert found(package="torch") == {service.digest_a, service.digest_b}
    assert found(label="experiment=upgrade") == {service.digest_b}
    assert found(label="doi") == {service.digest_a}
    assert found(name="train") == {service.digest_a, service.digest_b}
    assert found(name="other") == set()
    assert found(digest=service.digest_a) == {service.digest_a}
    image_b = manifest_b().observation.host
    assert image_b is not None
    assert found(digest=image_b.image_id) == {service.digest_b}
    search = service.url + "/?package=numpy%3D%3D2.3.5"
    browser.screenshot(search, "list-search-package.png", height=700)


def test_a_bad_search_says_why(service: Service, browser: Browser) -> None:
    text = _text(browser.dom(service.url + "/?digest=sha256:nothex"))
    assert "digest 'sha256:nothex': give sha256:<64 hex digits>" in text


def test_the_manifest_page(service: Service, browser: Browser) -> None:
    url = f"{service.url}/m/{service.digest_a}"
    dom = browser.dom(url)
    text = _text(dom)
    manifest = manifest_a()
    subject = subjects_for(manifest.observation)[0]
    assert f"train:2026.11 sha256:{subject.digest['sha256']}" in text
    assert f"cite as {url}" in text
    assert f"signed by {service.keyid}" in text
    # the lock
    assert manifest.lock is not None and manifest.lock.sha256 in text
    assert "Python 3.11 on manylinux_2_28_x86_64" in text
    # distributions
    assert "nvidia-nccl-cu12 2.27.3 pip 12" in text
    # the CUDA stack as loaded
    for fact in (
        "torch 2.10.0+cu128",
        "CUDA (built with) 12.8",
        "cuDNN 91002",
        "NCCL 2.27.3",
        "cuBLAS 12.8.4",
        "driver 570.133.20 (CUDA 12.8, from nvml)",
        "0: NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)",
    ):
        assert fact in text, fact
    # the GPU signature per GPU model
    suite = manifest.gpu_suites[0]
    assert "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, torch 2.10.0+cu128)" in text
    assert f"suite signature {suite.signature}; 4 of 4 tests ran" in text
    # the compatibility matrix: coloured cells, GPU by driver floor
    matrix = dom[dom.index('id="compat-matrix"') :]
    matrix = matrix[: matrix.index("</table>")]
    assert '<td class="ok">runs' in matrix and '<td class="bad">' in matrix
    assert re.search(r"H100.*?<td class=\"ok\">runs \(sm_90", matrix, re.S)
    assert ">= 570" in _text(matrix)
    # the verification history, each entry placed in the audit chain
    history = _text(dom[dom.index('id="history-table"') :])
    assert history.count("verified") == 2 and "not verified" in history
    assert len(re.findall(r"seq \d+, hash [0-9a-f]{16}, after [0-9a-f]{16}", history)) == 2
    browser.screenshot(url, "manifest.png", height=3400)


def test_the_diff_page_shows_the_report_lockd_diff_prints(
    service: Service, browser: Browser
) -> None:
    url = f"{service.url}/diff/{service.digest_a}/{service.digest_b}"
    dom = browser.dom(url)
    block = dom[dom.index('<pre id="diff">') : dom.index("</pre>")]
    shown = html.unescape(re.sub(r"<[^>]+>", "", block))
    a, b = manifest_a(), manifest_b()
    expected = render_text(
        diff_manifests(
            a,
            b,
            a_label=service.digest_a,
            b_label=service.digest_b,
            a_subjects=subjects_for(a.observation),
            b_subjects=subjects_for(b.observation),
        )
    )
    assert shown == expected
    assert '<span class="changed">  ~ changed numpy: 2.3.4 -&gt; 2.3.5</span>' in block
    assert '<span class="added">  + added nvidia-nccl-cu13: 2.28.3</span>' in block
    assert "23 difference(s)" in _text(dom)
    browser.screenshot(url, "diff.png", height=1000)


def test_pages_of_what_is_not_stored_are_404(service: Service) -> None:
    missing = "sha256:" + "0" * 64
    for path in (f"/m/{missing}", f"/diff/{service.digest_a}/{missing}"):
        try:
            urllib.request.urlopen(service.url + path, timeout=10)
        except urllib.error.HTTPError as e:
            assert e.code == 404
            assert f"no manifest {missing} is stored" in e.read().decode()
        else:
            raise AssertionError(f"{path} answered 200")


def _name_and_id(verifier_key: str) -> str:
    """``NAME+ID`` of a verifier key ``NAME+ID+KEY`` (a name holds no '+', the key may)."""
    return "+".join(verifier_key.split("+")[:2])


def test_export_then_verify_offline(service: Service, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.tar.gz"
    exported = _lockd(
        "audit",
        "export",
        service.digest_a,
        "--server",
        service.url,
        "-o",
        str(bundle),
        env={},
    )
    assert exported.returncode == 0, exported.stderr
    assert "2 report(s)" in exported.stdout and service.keyid in exported.stdout
    with tarfile.open(bundle) as tar:
        names = sorted(tar.getnames())
        meta = json.loads(tar.extractfile("bundle.json").read())  # type: ignore[union-attr]
    assert names == sorted(
        [
            "README.md",
            "audit.json",
            "bundle.json",
            "envelope.dsse.json",
            "index.json",
            f"keys/{service.keyid}.pub",
            "lock.json",
            "log/checkpoint.note",
            "log/inclusion.json",
            "log/log.vkey",
            "sbom.cdx.json",
            *(f"reports/{r['id']}.json" for r in meta["reports"]),
        ]
    )
    assert [r["verified"] for r in meta["reports"]] == [True, False]
    verified = _lockd("audit", "verify", str(bundle), env={})
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"the bundle holds: signed by keyid {service.keyid}" in verified.stdout
    # the log's proof, checked offline against the key the service's operator publishes
    with urllib.request.urlopen(service.url + "/v1/audit/log-key", timeout=10) as answer:
        log_key = answer.read().decode().strip()
    assert f"signed by {log_key}; check it with: lockd audit verify" in " ".join(
        exported.stdout.split()
    )
    pinned = _lockd("audit", "verify", str(bundle), "--log-key", log_key, env={})
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    assert pinned.stdout.splitlines()[-1] == (
        f"its audit entries are in the log signed by the pinned key {log_key}"
    )
    other = str(LogSigner.generate(log_key.split("+")[0]).verifier())
    refused = _lockd("audit", "verify", str(bundle), "--log-key", other, env={})
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "the bundle does NOT hold: log failed" in refused.stdout
    unpinned = _lockd(
        "audit", "export", service.digest_a, "--server", service.url, "-o",
        str(tmp_path / "other.tar.gz"), "--log-key", other, env={},
    )  # fmt: skip
    assert unpinned.returncode == 2, unpinned.stdout + unpinned.stderr
    assert " ".join(unpinned.stderr.split()) == (
        f"lockd: error: {service.url}/v1/audit/checkpoint: the note is signed by no trusted key "
        f"(trusted: {_name_and_id(other)}; signed by: {_name_and_id(log_key)}); a "
        "bundle of it would not verify"
    )
    assert not (tmp_path / "other.tar.gz").exists()
    again = _lockd(
        "audit",
        "export",
        service.digest_a,
        "--server",
        service.url,
        "-o",
        str(bundle),
        env={},
    )
    assert again.returncode == 2 and str(bundle) in " ".join(again.stderr.split())


def test_pages_need_a_reader_unless_anonymous_reads_are_on(service: Service) -> None:
    from fastapi.testclient import TestClient

    from lockd.server.app import create_app
    from lockd.server.settings import Settings

    made = _lockd("token", "create", "page-reader", "--role", "reader", env=service.env)
    assert made.returncode == 0, made.stderr
    settings = Settings(
        database_url=service.env["LOCKD_DATABASE_URL"],
        trusted_keys=(Path(service.env["LOCKD_TRUSTED_KEYS"]),),
    )
    with TestClient(create_app(settings)) as client:
        for path in ("/", f"/m/{service.digest_a}", f"/diff/{service.digest_a}/{service.digest_b}"):
            assert client.get(path).status_code == 401
            answer = client.get(path, headers={"Authorization": f"Bearer {made.stdout.strip()}"})
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/html")
