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
    decide,
    digests_to_check,
    images_of,
    load_config,
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
    else:
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
    assert (review.kind, review.namespace, review.name, review.operation, review.username) == (
        "Deployment",
        "prod",
        "web",
        "CREATE",
        "alice",
    )


def _without_uid() -> dict[str, Any]:
    doc = review_doc("Pod", {})
    del doc["request"]["uid"]
    return doc


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "a JSON object is expected"),
        (json.dumps({**review_doc("Pod", {}), "apiVersion": "v1"}).encode(), "'v1' is not spoken"),
        (json.dumps({**review_doc("Pod", {}), "kind": "Pod"}).encode(), "an AdmissionReview is"),
        (json.dumps({**review_doc("Pod", {}), "request": None}).encode(), "no 'request' object"),
        (json.dumps(_without_uid()).encode(), "request.uid is missing"),
    ],
)
def test_parse_review_bad_bodies(body: bytes, fragment: str) -> None:
    with pytest.raises(ReviewError, match=fragment):
        parse_review(body)


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
    ],
)
def test_config_bad(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError, match=fragment):
        parse_config(text, "admission.yaml")


def test_config_unreadable(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the admission config"):
        load_config(tmp_path / "missing.yaml")


def test_the_shipped_kubernetes_configs_parse() -> None:
    import yaml

    folder = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"
    assert load_config(folder / "admission.yaml").failure == "closed"
    docs = list(yaml.safe_load_all((folder / "lockd.yaml").read_text()))
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
