"""The pure admission core: AdmissionReview parsing, images of every workload kind, decisions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lockd.errors import PolicyError
from lockd.judgement.admission import (
    AdmissionConfig,
    ContainerImage,
    ImageVerdict,
    ReviewError,
    Rule,
    UnsupportedObjectError,
    cut_warnings,
    decide,
    digests_to_check,
    images_of,
    load_config,
    malformed_response,
    parse_config,
    parse_image,
    parse_review,
    review_response,
    static_problems,
)

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


def pod_spec(
    containers: list[str], init: list[str] = (), ephemeral: list[str] = ()
) -> dict[str, Any]:  # type: ignore[assignment]
    spec: dict[str, Any] = {
        "containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(containers)]
    }
    if init:
        spec["initContainers"] = [{"name": f"i{i}", "image": im} for i, im in enumerate(init)]
    if ephemeral:
        spec["ephemeralContainers"] = [
            {"name": f"e{i}", "image": im} for i, im in enumerate(ephemeral)
        ]
    return spec


def workload(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A real-shaped object of ``kind`` whose pod spec is ``spec``."""
    meta = {"name": "web", "namespace": "prod"}
    template = {"metadata": {"labels": {"app": "web"}}, "spec": spec}
    group = {
        "Pod": "v1",
        "Deployment": "apps/v1",
        "StatefulSet": "apps/v1",
        "DaemonSet": "apps/v1",
        "ReplicaSet": "apps/v1",
        "Job": "batch/v1",
        "CronJob": "batch/v1",
    }[kind]
    if kind == "Pod":
        return {"apiVersion": group, "kind": kind, "metadata": meta, "spec": spec}
    if kind == "CronJob":
        return {
            "apiVersion": group,
            "kind": kind,
            "metadata": meta,
            "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}},
        }
    return {
        "apiVersion": group,
        "kind": kind,
        "metadata": meta,
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template},
    }


def review_doc(kind: str, obj: Any, **request: Any) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
            "name": "web",
            "namespace": "prod",
            "operation": "CREATE",
            "userInfo": {"username": "alice", "groups": ["dev"]},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            **request,
        },
    }


KINDS = ("Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")


@pytest.mark.parametrize("kind", KINDS)
def test_images_of_every_kind_every_container_list(kind: str) -> None:
    spec = pod_spec([f"reg.example/app@{A}", "app:1"], init=[f"init@{B}"], ephemeral=["dbg:2"])
    found = images_of(kind, workload(kind, spec))
    assert [c.image for c in found] == [f"init@{B}", f"reg.example/app@{A}", "app:1", "dbg:2"]
    prefix = "spec" if kind == "Pod" else "spec.template.spec"
    if kind == "CronJob":
        prefix = "spec.jobTemplate.spec.template.spec"
    assert found[0].where == f"{prefix}.initContainers[0] (i0)"
    assert found[3].where == f"{prefix}.ephemeralContainers[0] (e0)"


@pytest.mark.parametrize(
    ("kind", "obj", "fragment"),
    [
        ("Service", {"spec": {}}, "cannot find the images of a Service"),
        ("", {"spec": {}}, r"cannot find the images of a \(no kind\)"),
        ("Pod", None, "has no pod spec at spec"),
        ("Deployment", {"spec": {"template": "x"}}, "has no pod spec at spec.template.spec"),
        ("CronJob", {"spec": {"jobTemplate": {}}}, "no pod spec at spec.jobTemplate.spec"),
        ("Pod", {"spec": {"containers": "app"}}, "spec.containers is not a list"),
        ("Pod", {"spec": {"containers": []}}, "has no containers"),
        (
            "Pod",
            {"spec": {"containers": [{"image": "x"}] * 300}},
            "more than 256 containers",
        ),
    ],
)
def test_images_of_bad_objects(kind: str, obj: Any, fragment: str) -> None:
    with pytest.raises(UnsupportedObjectError, match=fragment):
        images_of(kind, obj)


@pytest.mark.parametrize(
    ("ref", "registry", "repository", "tag", "digest"),
    [
        ("app", "docker.io", "app", None, None),
        ("library/app:1.0", "docker.io", "library/app", "1.0", None),
        (f"reg.example/team/app@{A}", "reg.example", "team/app", None, A),
        (f"127.0.0.1:5000/app:1@{A}", "127.0.0.1:5000", "app", "1", A),
        ("localhost/app:2", "localhost", "app", "2", None),
    ],
)
def test_parse_image(
    ref: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    parsed = parse_image(ref)
    assert (parsed.registry, parsed.repository, parsed.tag, parsed.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


def test_static_problems_tag_only_bad_digest_registry_and_missing_image() -> None:
    images = [
        ContainerImage("spec.containers[0] (a)", "app:1"),
        ContainerImage("spec.containers[1] (b)", "reg.example/app@sha256:abc"),
        ContainerImage("spec.containers[2] (c)", f"evil.example/app@{A}"),
        ContainerImage("spec.containers[3] (d)", f"reg.example/app@{B}"),
        ContainerImage("spec.containers[4] (e)", ""),
    ]
    found = static_problems(images, ["reg.example"])
    assert found == [
        "app:1 (spec.containers[0] (a)): not pinned by digest; deploy it as "
        "docker.io/app@sha256:<digest>",
        "reg.example/app@sha256:abc (spec.containers[1] (b)): the digest is not sha256:<64 hex>",
        f"evil.example/app@{A} (spec.containers[2] (c)): registry evil.example is not one of "
        "the allowed (reg.example)",
        "spec.containers[4] (e): no image",
    ]
    assert digests_to_check(images) == [A, B]


def test_decide_enforce_allows_only_when_every_verdict_passes() -> None:
    images = [ContainerImage("c0", f"app@{A}"), ContainerImage("c1", f"app@{B}")]
    ok = {A: ImageVerdict(True, "ok"), B: ImageVerdict(True, "ok")}
    allowed = decide(Rule(policy="default"), images, [], ok)
    assert allowed.allowed and allowed.problems == [] and allowed.action == "admission.allow"

    bad = {A: ImageVerdict(True, "ok"), B: ImageVerdict(False, "no signed lockd manifest")}
    denied = decide(Rule(policy="default"), images, [], bad)
    assert not denied.allowed
    assert denied.problems == [f"app@{B} (c1): no signed lockd manifest"]
    assert denied.action == "admission.deny"


def test_decide_audit_allows_with_warnings() -> None:
    images = [ContainerImage("c0", "app:1")]
    decision = decide(Rule(policy="prod", mode="audit"), images, ["app:1 (c0): not pinned"], {})
    assert decision.allowed
    assert decision.warnings == ["lockd audit (prod): app:1 (c0): not pinned"]
    assert decision.action == "admission.warn"


@pytest.mark.parametrize(
    ("failure", "allowed"),
    [("closed", False), ("open", True)],
)
def test_decide_store_unavailable_follows_the_failure_mode(failure: Any, allowed: bool) -> None:
    images = [ContainerImage("c0", f"app@{A}")]
    decision = decide(Rule(), images, [], {}, unavailable="timed out", failure=failure)
    assert decision.allowed is allowed
    if allowed:
        assert decision.warnings == ["lockd could not check the images: timed out"]
        assert decision.unchecked == "timed out"
        assert decision.action == "admission.allow_unchecked"
    else:
        assert decision.unchecked is None
        assert decision.action == "admission.deny"
        assert decision.problems == ["lockd could not check the images (timed out); failing closed"]


def test_review_response_carries_uid_and_api_version() -> None:
    doc = review_doc("Pod", workload("Pod", pod_spec(["app:1"])))
    doc["apiVersion"] = "admission.k8s.io/v1beta1"
    review = parse_review(json.dumps(doc).encode())
    images = images_of(review.kind, review.object)
    decision = decide(Rule(), images, static_problems(images, []), {})
    answer = review_response(review, decision)
    assert answer["apiVersion"] == "admission.k8s.io/v1beta1"
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 403
    assert (
        "app:1 (spec.containers[0] (c0)): not pinned by digest"
        in (answer["response"]["status"]["message"])
    )


def test_parse_review_reads_the_request() -> None:
    doc = review_doc("Deployment", workload("Deployment", pod_spec(["a:1"])))
    review = parse_review(json.dumps(doc).encode())
    assert (
        review.kind,
        review.namespace,
        review.name,
        review.operation,
        review.claimed_user,
        review.dry_run,
    ) == ("Deployment", "prod", "web", "CREATE", "alice", False)
    dry = parse_review(json.dumps({**doc, "request": {**doc["request"], "dryRun": True}}).encode())
    assert dry.dry_run is True


def _without_uid() -> dict[str, Any]:
    doc = review_doc("Pod", {})
    del doc["request"]["uid"]
    return doc


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "a JSON object is expected"),
        (json.dumps({**review_doc("Pod", {}), "request": None}).encode(), "no 'request' object"),
        (json.dumps(_without_uid()).encode(), "request.uid is missing"),
    ],
)
def test_parse_review_bad_bodies(body: bytes, fragment: str) -> None:
    with pytest.raises(ReviewError, match=fragment) as raised:
        parse_review(body)
    assert raised.value.answer_to is None  # no uid to answer to: HTTP 400


def test_an_unknown_version_names_both_spoken() -> None:
    body = json.dumps({**review_doc("Pod", {}), "apiVersion": "admission.k8s.io/v2"}).encode()
    with pytest.raises(ReviewError) as raised:
        parse_review(body)
    assert str(raised.value) == (
        "apiVersion 'admission.k8s.io/v2' is not spoken here; the webhook configuration must "
        "send admissionReviewVersions v1 or v1beta1 (admission.k8s.io/v1 or "
        "admission.k8s.io/v1beta1)"
    )
    assert raised.value.answer_to is None


UID = "705ab4f5-6393-11e8-b7cc-42010a800002"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"kind": "Pod"}, "kind 'Pod': an AdmissionReview is expected"),
        ({"request": {"kind": "Pod"}}, "request.kind is not an object with a string 'kind'"),
        ({"request": {"kind": {"kind": 7}}}, "request.kind is not an object with a string 'kind'"),
        ({"request": {"operation": ["CREATE"]}}, "request.operation is not a string"),
        ({"request": {"namespace": {"x": 1}}}, "request.namespace is not a string"),
        ({"request": {"userInfo": "admin"}}, "request.userInfo is not an object"),
        ({"request": {"dryRun": "yes"}}, "request.dryRun is not a boolean"),
    ],
)
def test_a_malformed_review_with_a_readable_uid_is_denied_as_a_review(
    change: dict[str, Any], why: str
) -> None:
    doc = review_doc("Pod", workload("Pod", pod_spec(["app:1"])))
    doc["apiVersion"] = "admission.k8s.io/v1beta1"
    doc["request"].update(change.pop("request", {}))
    doc.update(change)
    with pytest.raises(ReviewError) as raised:
        parse_review(json.dumps(doc).encode())
    assert raised.value.answer_to == ("admission.k8s.io/v1beta1", UID)
    assert malformed_response(raised.value) == {
        "apiVersion": "admission.k8s.io/v1beta1",
        "kind": "AdmissionReview",
        "response": {
            "uid": UID,
            "allowed": False,
            "status": {
                "code": 400,
                "reason": "BadRequest",
                "message": f"a malformed AdmissionReview: {why}",
            },
        },
    }


def test_warnings_are_cut_to_kubernetes_limit_and_a_sane_count() -> None:
    long = "w" * 300
    assert cut_warnings([long, "short"]) == ["w" * 255 + "…", "short"]
    assert len(cut_warnings([long])[0]) == 256
    assert cut_warnings(["x" * 256]) == ["x" * 256]
    many = [f"warning {i}" for i in range(30)]
    assert cut_warnings(many) == [*many[:19], "lockd: 11 more warnings left out"]
    assert cut_warnings(many[:20]) == many[:20]


def test_an_audit_mode_answer_carries_at_most_20_warnings_of_256_characters() -> None:
    images = [ContainerImage(f"spec.containers[{i}] ({'n' * 60})", "x" * 300) for i in range(40)]
    decision = decide(Rule(mode="audit"), images, static_problems(images, []), {})
    doc = review_doc("Pod", workload("Pod", pod_spec(["app:1"])))
    warnings = review_response(parse_review(json.dumps(doc).encode()), decision)["response"][
        "warnings"
    ]
    assert len(decision.warnings) == 40
    assert len(warnings) == 20
    assert max(len(w) for w in warnings) == 256
    assert warnings[-1] == "lockd: 21 more warnings left out"


def test_config_parses_and_rules_by_namespace(tmp_path: Path) -> None:
    path = tmp_path / "admission.yaml"
    path.write_text(
        "namespaces:\n  prod: {policy: default, mode: enforce}\n  dev: {policy: audit, mode: audit}\n"
        "cache_ttl_s: 5\ndeadline_s: 0.5\nfailure: open\n"
    )
    config = load_config(path)
    assert config.rule_for("dev") == Rule(policy="audit", mode="audit")
    assert config.rule_for("elsewhere") == Rule()
    assert (config.cache_ttl_s, config.deadline_s, config.failure) == (5, 0.5, "open")
    assert AdmissionConfig().failure == "closed"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("namespaces: [", "not valid YAML"),
        ("- a", "must be a mapping"),
        ("failur: open", "failur: unknown key"),
        ("namespaces: {prod: {mode: block}}", "namespaces.prod.mode"),
        ("deadline_s: 60", "deadline_s"),
        ("namespaces: {prod: {policy: ../x}}", "namespaces.prod.policy"),
        (
            "registry_fallback: true",
            "admission.yaml: registry_fallback: list the registries to read attestations from "
            r"\(e.g. \[reg.example:5000\]\); a yes/no is not accepted",
        ),
    ],
)
def test_config_bad(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError, match=fragment):
        parse_config(text, "admission.yaml")


def test_config_unreadable(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the admission config"):
        load_config(tmp_path / "missing.yaml")


DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"


def test_the_shipped_kubernetes_configs_parse() -> None:
    import yaml

    assert load_config(DEPLOY / "admission.yaml").failure == "closed"
    assert load_config(DEPLOY / "admission.yaml").registry_fallback == []
    docs = list(yaml.safe_load_all((DEPLOY / "lockd.yaml").read_text()))
    kinds = [d["kind"] for d in docs]
    assert kinds == [
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "ValidatingWebhookConfiguration",
    ]
    config = parse_config(docs[1]["data"]["admission.yaml"], "lockd.yaml ConfigMap")
    [hook] = docs[4]["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] > config.deadline_s
    assert hook["clientConfig"]["service"]["path"] == "/v1/admission"
    assert hook["admissionReviewVersions"] == ["v1"]
    # dry runs are not audited; every other decision is (a side effect)
    assert hook["sideEffects"] == "NoneOnDryRun"


def test_the_shipped_deployment_runs_lockd_serve_with_tls_and_the_admission_listener() -> None:
    """The container's command parses as `lockd serve` options naming the mounted secrets, and
    the webhook calls the admission listener's port through the Service."""
    import typer
    import yaml

    from lockd.cli.app import app

    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "lockd.yaml").read_text())}
    [container] = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:2] == ["/opt/lockd/bin/lockd", "serve"]
    group = typer.main.get_command(app)
    serve = group.commands["serve"]  # type: ignore[attr-defined]
    params = serve.make_context("serve", list(command[2:])).params
    assert params["host"] == "0.0.0.0"
    assert (params["tls_cert"], params["tls_key"]) == (Path("/tls/tls.crt"), Path("/tls/tls.key"))
    assert params["client_ca"] == Path("/client-ca/ca.crt")
    assert params["insecure_admission"] is False
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {
        v["name"]: v["secret"]["secretName"]
        for v in docs["Deployment"]["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    }
    assert (mounts["tls"], volumes["tls"]) == ("/tls", "lockd-webhook-tls")
    assert (mounts["client-ca"], volumes["client-ca"]) == ("/client-ca", "lockd-apiserver-ca")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"https": params["port"], "admission": params["admission_port"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
        assert container[probe]["httpGet"]["port"] == "https"
    service_ports = {p["port"]: p["targetPort"] for p in docs["Service"]["spec"]["ports"]}
    [hook] = docs["ValidatingWebhookConfiguration"]["webhooks"]
    assert service_ports[hook["clientConfig"]["service"]["port"]] == "admission"
    # The API server's kubeconfig names the webhook's service DNS name and port.
    apiserver = DEPLOY / "apiserver"
    admission = yaml.safe_load((apiserver / "admission-configuration.yaml").read_text())
    [plugin] = admission["plugins"]
    assert plugin["name"] == "ValidatingAdmissionWebhook"
    kubeconfig = yaml.safe_load((apiserver / "webhook-kubeconfig.yaml").read_text())
    assert plugin["configuration"]["kubeConfigFile"].endswith("/webhook-kubeconfig.yaml")
    [user] = kubeconfig["users"]
    service = hook["clientConfig"]["service"]
    assert user["name"] == f"{service['name']}.{service['namespace']}.svc:{service['port']}"


def test_the_readmes_openssl_steps_make_certificates_lockd_serves_with(tmp_path: Path) -> None:
    """The openssl lines of deploy/kubernetes/README.md, run as written (real openssl): lockd
    loads the serving certificate and the client CA, the serving certificate names the
    Service, and the API server's certificate verifies against the CA for client auth."""
    import re
    import subprocess

    from cryptography import x509

    from lockd.server.run import check_tls
    from lockd.server.settings import Settings

    readme = (DEPLOY / "README.md").read_text()
    block = re.search(r"\*\*openssl\*\*.*?```sh\n(.*?)```", readme, re.S)
    assert block is not None
    script = block.group(1)
    assert script.count("openssl ") == 5
    subprocess.run(["sh", "-e", "-c", script], cwd=tmp_path, check=True, capture_output=True)
    settings = Settings(
        database_url="sqlite://",
        tls_cert=tmp_path / "tls.crt",
        tls_key=tmp_path / "tls.key",
        admission_port=8443,
        client_ca=tmp_path / "ca.crt",
    )
    check_tls(settings)
    served = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName)[0] == "lockd.lockd-system.svc"
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", "ca.crt", "-purpose", "sslclient", "apiserver.crt"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
