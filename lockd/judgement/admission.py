"""Kubernetes admission, the pure part: read an AdmissionReview, find every image of the object
(Pods and the pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and
CronJobs: containers, init containers, ephemeral containers), and decide from per-image
verdicts under the namespace's rule (``enforce`` denies, ``audit`` allows with warnings).

No I/O here: the service looks the verdicts up (store, cache, deadline) and writes the audit.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lockd.errors import InputError, PolicyError
from lockd.trust.statement import canonical_json

API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
POD_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
GATED_OPERATIONS = ("CREATE", "UPDATE")
MAX_CONTAINERS = 256
MAX_WARNINGS = 20
MAX_WARNING = 256  # Kubernetes truncates (and may reject) longer admission warnings
MAX_TEXT = 512
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_POLICY_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

Mode = Literal["enforce", "audit"]

__all__ = [
    "API_VERSIONS",
    "AdmissionConfig",
    "ContainerImage",
    "Decision",
    "ImageRef",
    "ImageVerdict",
    "Review",
    "ReviewError",
    "Rule",
    "UnsupportedObjectError",
    "decide",
    "images_of",
    "load_config",
    "parse_config",
    "parse_image",
    "parse_review",
    "review_response",
]


class ReviewError(InputError):
    """The body is not an AdmissionReview lockd can answer. With ``answer_to`` (the body's
    apiVersion and request.uid were readable) the caller denies it as an AdmissionReview;
    without, there is nothing to answer to (HTTP 400)."""

    def __init__(self, message: str, answer_to: tuple[str, str] | None = None) -> None:
        super().__init__(message)
        self.answer_to = answer_to


class UnsupportedObjectError(InputError):
    """The reviewed object's images cannot be found (an unknown kind, a missing pod spec)."""


# --- configuration ------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Rule(_Strict):
    """What a namespace's deploys must meet: a policy of the service, and a mode."""

    policy: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    mode: Mode = "enforce"


class AdmissionConfig(_Strict):
    """``LOCKD_ADMISSION_CONFIG``: namespaces → rules, the cache, the deadline, what to do when
    the store does not answer in time (``closed``: deny, the default; ``open``: allow with a
    warning), optionally the only registries images may come from, and the registries whose
    attestations are read when the store has no manifest for an image (none by default: lockd
    asks no host an anonymous caller names)."""

    namespaces: dict[str, Rule] = {}
    default: Rule = Rule()
    cache_ttl_s: float = Field(default=60.0, ge=0, le=86400)
    deadline_s: float = Field(default=2.0, gt=0, le=30)
    failure: Literal["closed", "open"] = "closed"
    registries: list[str] = []
    registry_fallback: list[str] = []

    @field_validator("registry_fallback", mode="before")
    @classmethod
    def _hosts_not_a_flag(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError(
                "list the registries to read attestations from (e.g. [reg.example:5000]); "
                "a yes/no is not accepted: images name any host they like"
            )
        return value

    def rule_for(self, namespace: str) -> Rule:
        return self.namespaces.get(namespace, self.default)


def parse_config(text: str, source: str) -> AdmissionConfig:
    """Parse the admission configuration (YAML).

    Raises:
        PolicyError: not YAML, not a mapping, an unknown key or a bad value (named).
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PolicyError(f"{source}: not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the admission config must be a mapping")
    try:
        return AdmissionConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        why = (
            "unknown key"
            if first["type"] == "extra_forbidden"
            else str(first["msg"]).removeprefix("Value error, ")
        )
        raise PolicyError(
            f"{source}: {where}: {why}; see deploy/kubernetes/admission.yaml for an example"
        ) from e


def load_config(path: Path) -> AdmissionConfig:
    """Raises PolicyError naming ``path`` when it cannot be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(
            f"{path}: cannot read the admission config ({e}); check LOCKD_ADMISSION_CONFIG"
        ) from e
    return parse_config(text, str(path))


# --- the review ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Review:
    api_version: str
    uid: str
    kind: str
    namespace: str
    name: str
    operation: str
    claimed_user: str  # userInfo.username: what the caller says, not who called
    object: dict[str, Any] | None
    dry_run: bool = False


def _text(value: object, limit: int = 253) -> str:
    return value[:limit] if isinstance(value, str) else ""


def parse_review(data: bytes) -> Review:
    """The parts of an AdmissionReview that admission needs.

    Raises:
        ReviewError: not JSON, not an AdmissionReview of a known apiVersion, no request.uid
            (``answer_to`` None); a readable uid with a malformed rest (``answer_to`` set).
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReviewError(f"the AdmissionReview is not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise ReviewError("the body is not an AdmissionReview (a JSON object is expected)")
    version = doc.get("apiVersion")
    if version not in API_VERSIONS:
        raise ReviewError(
            f"apiVersion {str(version)[:64]!r} is not spoken here; the webhook configuration must "
            f"send admissionReviewVersions v1 or v1beta1 ({' or '.join(API_VERSIONS)})"
        )
    request = doc.get("request")
    if not isinstance(request, dict):
        raise ReviewError("the AdmissionReview has no 'request' object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > 128:
        raise ReviewError("request.uid is missing or not a string of 1-128 characters")
    answer_to = (str(version), uid)

    def malformed(why: str) -> ReviewError:
        return ReviewError(f"a malformed AdmissionReview: {why}", answer_to)

    if doc.get("kind") != "AdmissionReview":
        raise malformed(f"kind {str(doc.get('kind'))[:64]!r}: an AdmissionReview is expected")
    kind = request.get("kind")
    if not isinstance(kind, dict) or not isinstance(kind.get("kind"), str):
        raise malformed("request.kind is not an object with a string 'kind'")
    operation = request.get("operation")
    if not isinstance(operation, str):
        raise malformed("request.operation is not a string")
    for name in ("namespace", "name"):
        if not isinstance(request.get(name, ""), str | None):
            raise malformed(f"request.{name} is not a string")
    user = request.get("userInfo")
    if user is not None and not isinstance(user, dict):
        raise malformed("request.userInfo is not an object")
    dry_run = request.get("dryRun", False)
    if not isinstance(dry_run, bool | None):
        raise malformed("request.dryRun is not a boolean")
    obj = request.get("object")
    return Review(
        api_version=str(version),
        uid=uid,
        kind=_text(kind.get("kind"), 64),
        namespace=_text(request.get("namespace")),
        name=_text(request.get("name")) or _name_of(obj),
        operation=_text(operation, 16),
        claimed_user=_text(user.get("username") if user else None, 128),
        object=obj if isinstance(obj, dict) else None,
        dry_run=dry_run is True,
    )


def _name_of(obj: object) -> str:
    if isinstance(obj, dict):
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            return _text(meta.get("name")) or _text(meta.get("generateName"))
    return ""


# --- images -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """An image reference split the way container runtimes read it."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None  # sha256:<hex> when pinned


def parse_image(ref: str) -> ImageRef:
    """Split ``[registry/]repository[:tag][@sha256:hex]``; the registry is the first component
    when it has a '.' or ':' or is ``localhost``, else Docker Hub's ``docker.io``."""
    name, at, digest = ref.partition("@")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = "docker.io", name
    repository, colon, tag = path.rpartition(":") if ":" in path else (path, "", "")
    return ImageRef(
        registry=registry,
        repository=repository if colon else path,
        tag=tag if colon else None,
        digest=digest if at else None,
    )


@dataclass(frozen=True)
class ContainerImage:
    """One container of the object: where it is (``spec.containers[0] (app)``) and its image."""

    where: str
    image: str


def images_of(kind: str, obj: Mapping[str, Any] | None) -> list[ContainerImage]:
    """Every container's image in a Pod or a workload's pod template, in spec order.

    Raises:
        UnsupportedObjectError: an unknown kind, or no pod spec where the kind keeps it.
    """
    path = POD_PATHS.get(kind)
    if path is None:
        known = ", ".join(POD_PATHS)
        raise UnsupportedObjectError(
            f"lockd cannot find the images of a {kind or '(no kind)'!s}: it gates {known}; "
            "list only those in the webhook's rules"
        )
    spec: object = obj
    for step in path:
        spec = spec.get(step) if isinstance(spec, Mapping) else None
    prefix = ".".join(path)
    if not isinstance(spec, Mapping):
        raise UnsupportedObjectError(f"the {kind} has no pod spec at {prefix}")
    found: list[ContainerImage] = []
    for group in CONTAINER_LISTS:
        containers = spec.get(group)
        if containers is None:
            continue
        if not isinstance(containers, list):
            raise UnsupportedObjectError(f"the {kind}'s {prefix}.{group} is not a list")
        for index, container in enumerate(containers):
            name = container.get("name") if isinstance(container, Mapping) else None
            label = f" ({name[:63]})" if isinstance(name, str) and name else ""
            where = f"{prefix}.{group}[{index}]{label}"
            image = container.get("image") if isinstance(container, Mapping) else None
            found.append(ContainerImage(where, image[:MAX_TEXT] if isinstance(image, str) else ""))
            if len(found) > MAX_CONTAINERS:
                raise UnsupportedObjectError(
                    f"the {kind} has more than {MAX_CONTAINERS} containers; lockd reviews no more"
                )
    if not found:
        raise UnsupportedObjectError(f"the {kind} has no containers at {prefix}.containers")
    return found


# --- decisions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageVerdict:
    """What the store says about one image digest under one policy."""

    ok: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    allowed: bool
    mode: Mode
    policy: str
    problems: list[str]
    warnings: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    unchecked: str | None = None  # allowed although the images could not be checked: why

    @property
    def action(self) -> str:
        """``admission.allow``, ``admission.deny``, ``admission.allow_unchecked`` (the images
        could not be checked in time and the failure mode, or audit mode, allowed it), or
        ``admission.warn`` (allowed in audit mode with problems found)."""
        if not self.allowed:
            return "admission.deny"
        if self.unchecked is not None:
            return "admission.allow_unchecked"
        return "admission.warn" if self.problems or self.warnings else "admission.allow"


def static_problems(images: Sequence[ContainerImage], registries: Sequence[str]) -> list[str]:
    """Problems visible without the store: no image, not pinned by digest, a registry outside
    the allowed ones."""
    problems = []
    for c in images:
        if not c.image:
            problems.append(f"{c.where}: no image")
            continue
        ref = parse_image(c.image)
        if ref.digest is None:
            problems.append(
                f"{c.image} ({c.where}): not pinned by digest; deploy it as "
                f"{ref.registry}/{ref.repository}@sha256:<digest>"
            )
        elif not _DIGEST.match(ref.digest):
            problems.append(f"{c.image} ({c.where}): the digest is not sha256:<64 hex>")
        elif registries and ref.registry not in registries:
            problems.append(
                f"{c.image} ({c.where}): registry {ref.registry} is not one of the allowed "
                f"({', '.join(registries)})"
            )
    return problems


def digests_to_check(images: Sequence[ContainerImage]) -> list[str]:
    """The distinct, well-formed digests of pinned images (each looked up once)."""
    seen: dict[str, None] = {}
    for c in images:
        digest = parse_image(c.image).digest if c.image else None
        if digest is not None and _DIGEST.match(digest):
            seen.setdefault(digest, None)
    return list(seen)


def decide(
    rule: Rule,
    images: Sequence[ContainerImage],
    problems: Sequence[str],
    verdicts: Mapping[str, ImageVerdict],
    *,
    unavailable: str | None = None,
    failure: Literal["closed", "open"] = "closed",
) -> Decision:
    """The decision for one object. ``problems`` are those found before the store (see
    :func:`static_problems`); each image whose digest has a failing verdict adds one naming the
    image. ``unavailable`` says why the store gave no verdicts (then ``failure`` decides)."""
    found = list(problems)
    for c in images:
        digest = parse_image(c.image).digest if c.image else None
        verdict = verdicts.get(digest) if digest is not None else None
        if verdict is not None and not verdict.ok:
            found.append(f"{c.image} ({c.where}): {verdict.reason}")
    warnings: list[str] = []
    names = [c.image for c in images]
    if unavailable is not None:
        if failure == "open" or rule.mode == "audit":
            warnings.append(f"lockd could not check the images: {unavailable}")
        else:
            found.append(f"lockd could not check the images ({unavailable}); failing closed")
    if rule.mode == "audit":
        warnings = [f"lockd audit ({rule.policy}): {p}" for p in found] + warnings
        return Decision(True, rule.mode, rule.policy, found, warnings, names, unavailable)
    unchecked = unavailable if not found else None
    return Decision(not found, rule.mode, rule.policy, found, warnings, names, unchecked)


def review_response(review: Review, decision: Decision) -> dict[str, Any]:
    """The AdmissionReview answer: the request's uid, the same apiVersion."""
    response: dict[str, Any] = {"uid": review.uid, "allowed": decision.allowed}
    if not decision.allowed:
        message = f"lockd denied this {review.kind or 'object'} under policy {decision.policy}: "
        response["status"] = {
            "code": 403,
            "reason": "Forbidden",
            "message": message + "; ".join(decision.problems),
        }
    if decision.warnings:
        response["warnings"] = cut_warnings(decision.warnings)
    return {"apiVersion": review.api_version, "kind": "AdmissionReview", "response": response}


def cut_warnings(warnings: Sequence[str]) -> list[str]:
    """At most :data:`MAX_WARNINGS` warnings of at most :data:`MAX_WARNING` characters each
    (Kubernetes' limit), the last saying how many were left out."""
    if len(warnings) > MAX_WARNINGS:
        more = len(warnings) - (MAX_WARNINGS - 1)
        warnings = [*warnings[: MAX_WARNINGS - 1], f"lockd: {more} more warnings left out"]
    return [w if len(w) <= MAX_WARNING else w[: MAX_WARNING - 1] + "…" for w in warnings]


def plain_response(review: Review, allowed: bool) -> dict[str, Any]:
    """An answer with no images judged (an operation lockd does not gate)."""
    response: dict[str, Any] = {"uid": review.uid, "allowed": allowed}
    return {"apiVersion": review.api_version, "kind": "AdmissionReview", "response": response}


def malformed_response(error: ReviewError) -> dict[str, Any]:
    """The deny for a malformed review whose apiVersion and uid were readable."""
    assert error.answer_to is not None
    version, uid = error.answer_to
    response = {
        "uid": uid,
        "allowed": False,
        "status": {"code": 400, "reason": "BadRequest", "message": str(error)[:MAX_TEXT]},
    }
    return {"apiVersion": version, "kind": "AdmissionReview", "response": response}


def decision_digest(review: Review, decision: Decision) -> str:
    """sha256 of the decision's canonical JSON (the audit entry's body digest)."""
    body = {
        "uid": review.uid,
        "namespace": review.namespace,
        "kind": review.kind,
        "name": review.name,
        "operation": review.operation,
        "claimed_user": review.claimed_user,
        "dry_run": review.dry_run,
        "allowed": decision.allowed,
        "mode": decision.mode,
        "policy": decision.policy,
        "images": decision.images,
        "problems": decision.problems,
        "warnings": decision.warnings,
        "unchecked": decision.unchecked,
    }
    return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()


def is_policy_name(name: str) -> bool:
    return bool(_POLICY_NAME.match(name))
