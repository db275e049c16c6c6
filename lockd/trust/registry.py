"""Signed manifests next to images in OCI registries (Distribution API v2, standard library HTTP).

``attach`` stores an envelope three ways, so every registry can find it and no concurrent
attach loses one:

1. an OCI 1.1 referrer: an image manifest with ``artifactType`` :data:`ARTIFACT_TYPE`, the empty
   config, one layer (the envelope, ``application/vnd.dsse.envelope.v1+json``) and ``subject`` =
   the image manifest's descriptor, pushed by digest (found with ``GET /v2/<name>/referrers/``);
2. the same manifest under a tag of its own, ``sha256-<hex>.lockd-<16 hex of the envelope>``, for
   registries without the referrers API (one tag per attestation: nothing to overwrite);
3. cosign's tag ``sha256-<hex>.att``: one manifest whose layers are the attestations. That tag is
   read-modify-write, so attaches serialize on a lock file (writers of this host) and re-read
   after writing, merging again until their layer stays (writers of other hosts).

``fetch`` reads all three and returns each distinct envelope once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import ipaddress
import json
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockd.errors import InputError, LockdError
from lockd.fileio import UntrustedFileError, cache_root, open_own_file, untrusted_directory

DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
# A Sigstore bundle's referrer (as cosign stores one): artifactType and layer of this media type.
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
_READ = (DSSE_MEDIA_TYPE, BUNDLE_MEDIA_TYPE)
ARTIFACT_TYPE = "application/vnd.lockd.manifest.v1+dsse"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
ACCEPT = ", ".join(
    (
        OCI_MANIFEST,
        OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)
TIMEOUT_S = 30.0
MAX_MANIFEST = 4 * 1024 * 1024
MAX_BLOB = 16 * 1024 * 1024
ATTACH_TRIES = 20
MAX_TAG_PAGES = 20  # of up to 1000 tags each: a registry whose Link never ends is cut off
_REF = re.compile(
    r"^(?P<host>[A-Za-z0-9.-]+(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?)/"
    r"(?P<repo>[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*)"
    r"(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?@(?P<digest>sha256:[0-9a-f]{64})$"
)

__all__ = [
    "Deadline",
    "ImageRef",
    "Registry",
    "RegistryError",
    "attach",
    "attach_bundle",
    "fetch",
    "parse_ref",
]


class RegistryError(LockdError):
    """The registry cannot be reached, refuses, or answers garbage (exit 3: like a target that
    cannot be inspected)."""

    exit_code = 3


@dataclass(frozen=True)
class ImageRef:
    host: str
    repository: str
    digest: str

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}@{self.digest}"

    @property
    def tag_stem(self) -> str:
        """``sha256-<hex>``: how cosign names tags that belong to this digest."""
        return self.digest.replace(":", "-")


def parse_ref(image: str) -> ImageRef:
    """``HOST[:PORT]/REPOSITORY[:TAG]@sha256:<hex>``.

    Raises:
        InputError: no registry host, or not pinned by a sha256 digest.
    """
    match = _REF.match(image)
    if match is None or not (
        "." in match["host"] or ":" in match["host"] or match["host"] in ("localhost",)
    ):
        raise InputError(
            f"{image!r}: give the image as REGISTRY/REPOSITORY@sha256:<64 hex> (the registry "
            "host is required, e.g. 127.0.0.1:5000/team/app@sha256:…)"
        )
    return ImageRef(match["host"], match["repo"], match["digest"])


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegistryError(f"{where}: the registry answered something that is not JSON") from e
    if not isinstance(doc, dict):
        raise RegistryError(f"{where}: the registry answered a JSON {type(doc).__name__}")
    return doc


def is_loopback(host: str) -> bool:
    """``HOST[:PORT]`` names this machine: exactly ``localhost``, an address of 127.0.0.0/8 or
    ``[::1]`` (never a name that merely starts like one: ``localhost.evil.example``,
    ``127.evil.example``)."""
    name = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Deadline:
    """When a lookup is given up: every request gets the time left as its socket timeout, and
    :meth:`abandon` (called from another thread when the caller stops waiting) shuts down the
    connections in use, so a registry that sends a byte now and then cannot keep the lookup,
    its thread or its connection alive past the deadline."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.abandoned = False

    def passed(self) -> bool:
        return self.abandoned or time.monotonic() >= self.at

    def left(self, where: str) -> float:
        """Seconds left; raises RegistryError naming ``where`` once none are."""
        left = self.at - time.monotonic()
        if self.abandoned or left <= 0:
            raise RegistryError(f"{where}: the lookup's deadline passed; it was abandoned")
        return left

    def track(self, sock: socket.socket, where: str) -> None:
        with self._lock:
            if not self.abandoned:
                self._sockets.add(sock)
                return
        _shut(sock)
        raise RegistryError(f"{where}: the lookup's deadline passed; it was abandoned")

    def abandon(self) -> None:
        """Close every connection of the lookup (a blocked read returns at once)."""
        with self._lock:
            self.abandoned = True
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


_BLOB_PATH = re.compile(r"/v2/.+/blobs/sha256:[0-9a-f]{64}")


def _redirects(url: str, where: str) -> urllib.request.HTTPRedirectHandler:
    """Redirects of a request for ``url``: within its origin (scheme, host, port) always; to
    another origin only for a blob (its content is checked against its digest: registries
    send blobs to a CDN) and only over HTTPS. urllib alone follows any redirect to any host and
    scheme (ftp:// and http:// included), so a registry the admission config lists could have
    made lockd fetch whatever it named (an address inside the cluster) and echo its answer."""
    origin = urllib.parse.urlsplit(url)[:2]
    blob = _BLOB_PATH.fullmatch(urllib.parse.urlsplit(url).path) is not None

    class Redirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(
            self,
            req: urllib.request.Request,
            fp: Any,
            code: int,
            msg: str,
            headers: Any,
            newurl: str,
        ) -> urllib.request.Request | None:
            target = urllib.parse.urlsplit(newurl)
            if target[:2] != origin and not (blob and target.scheme == "https"):
                fp.close()
                raise RegistryError(
                    f"{where}: the registry redirected to another origin ({newurl[:200]}); "
                    "lockd follows redirects within the registry's origin, and to another "
                    "only for a blob, over HTTPS"
                )
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return Redirects()


def _opener(deadline: Deadline | None, url: str, where: str) -> urllib.request.OpenerDirector:
    """urllib with :func:`_redirects`' rule, and with connections whose sockets ``deadline``
    can shut down."""
    if deadline is None:
        return urllib.request.build_opener(_redirects(url, where))
    tracking = deadline

    class Plain(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            tracking.track(self.sock, where)

    class Secure(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            tracking.track(self.sock, where)

    class PlainHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Plain, req)

    class SecureHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Secure, req)

    return urllib.request.build_opener(PlainHandler, SecureHandler, _redirects(url, where))


class Registry:
    """One registry host; plain HTTP on loopback (:func:`is_loopback`), HTTPS elsewhere. No
    authentication. With a ``deadline`` every request ends by it (see :class:`Deadline`)."""

    def __init__(
        self, host: str, *, timeout: float = TIMEOUT_S, deadline: Deadline | None = None
    ) -> None:
        scheme = "http" if is_loopback(host) else "https"
        self.base = f"{scheme}://{host}"
        self.timeout = timeout
        self.deadline = deadline

    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        limit: int = MAX_MANIFEST,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body)``; a status outside ``ok`` raises, except 404 when listed.

        Raises:
            RegistryError: no answer, a status not in ``ok``, or a body over ``limit``.
        """
        full = url if url.startswith(("http://", "https://")) else self.base + url
        request = urllib.request.Request(full, data=body, method=method, headers=headers or {})  # noqa: S310 (scheme fixed above)
        where = f"{method} {full}"
        timeout = self.timeout
        if self.deadline is not None:
            timeout = min(timeout, self.deadline.left(where))
        opener = _opener(self.deadline, full, where)
        try:
            with opener.open(request, timeout=timeout) as answer:
                status, got, data = answer.status, dict(answer.headers), answer.read(limit + 1)
        except urllib.error.HTTPError as e:
            status, got, data = e.code, dict(e.headers or {}), e.read(64 * 1024)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            if self.deadline is not None:
                self.deadline.left(where)  # the deadline's doing: say so
            reason = getattr(e, "reason", e)
            raise RegistryError(
                f"{where}: cannot reach the registry ({reason}); check the image's registry"
            ) from e
        if status not in ok:
            raise RegistryError(f"{where}: the registry answered {status} {data[:200]!r}")
        if len(data) > limit:
            raise RegistryError(f"{where}: the answer is larger than {limit} bytes")
        return status, {k.lower(): v for k, v in got.items()}, data

    # --- manifests and blobs ----------------------------------------------------------------

    def manifest(self, repo: str, reference: str) -> tuple[bytes, str] | None:
        """The manifest's bytes and media type (None: 404)."""
        status, headers, data = self.request(
            "GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT}, ok=(200, 404)
        )
        if status == 404:
            return None
        media = headers.get("content-type", "").split(";")[0].strip()
        return data, media or str(_json(data, f"{repo}:{reference}").get("mediaType", ""))

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> None:
        self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            body=data,
            headers={"Content-Type": media_type},
            ok=(201, 202),
        )

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload a blob (once: an existing one is left alone); its digest."""
        digest = _sha256(data)
        status, _, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", ok=(200, 404))
        if status == 200:
            return digest
        _, headers, _ = self.request("POST", f"/v2/{repo}/blobs/uploads/", ok=(202,))
        location = headers.get("location")
        if not location:
            raise RegistryError(f"{self.base}/v2/{repo}/blobs/uploads/: no upload Location")
        url = urllib.parse.urljoin(self.base + "/", location)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
        self.request(
            "PUT",
            url,
            body=data,
            headers={"Content-Type": "application/octet-stream"},
            ok=(201, 204),
        )
        return digest

    def blob(self, repo: str, digest: str) -> bytes:
        _, _, data = self.request("GET", f"/v2/{repo}/blobs/{digest}", limit=MAX_BLOB)
        if _sha256(data) != digest:
            raise RegistryError(f"{self.base}/v2/{repo}/blobs/{digest}: content does not match")
        return data

    def referrers(
        self, repo: str, digest: str, artifact_type: str = ARTIFACT_TYPE
    ) -> list[dict[str, Any]] | None:
        """The referrers API's descriptors (None: the registry has no referrers API)."""
        status, _, data = self.request(
            "GET",
            f"/v2/{repo}/referrers/{digest}?artifactType={urllib.parse.quote(artifact_type)}",
            headers={"Accept": OCI_INDEX},
            ok=(200, 404),
        )
        if status == 404:
            return None
        manifests = _json(data, f"{repo} referrers of {digest}").get("manifests")
        return [m for m in manifests if isinstance(m, dict)] if isinstance(manifests, list) else []

    def tags(self, repo: str) -> Iterator[str]:
        """Every tag of ``repo``, following ``Link`` headers only to this registry's own origin
        and for at most :data:`MAX_TAG_PAGES` pages.

        Raises:
            RegistryError: a Link to another origin, or more pages than the cap.
        """
        url: str | None = f"{self.base}/v2/{repo}/tags/list?n=1000"
        origin = urllib.parse.urlsplit(self.base)[:2]
        for _ in range(MAX_TAG_PAGES):
            assert url is not None
            status, headers, data = self.request("GET", url, ok=(200, 404))
            if status == 404:
                return
            found = _json(data, f"{repo} tags").get("tags") or []
            yield from (t for t in found if isinstance(t, str))
            match = re.match(r"\s*<([^>]+)>", headers.get("link", ""))
            if match is None:
                return
            url = urllib.parse.urljoin(url, match.group(1))
            if urllib.parse.urlsplit(url)[:2] != origin:
                raise RegistryError(
                    f"{self.base}/v2/{repo}/tags/list: the next page's Link points to another "
                    f"origin ({url[:200]}); only {self.base} is followed"
                )
        raise RegistryError(
            f"{self.base}/v2/{repo}/tags/list: more than {MAX_TAG_PAGES} pages of tags; lockd "
            "reads no more"
        )


def _descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _sha256(data), "size": len(data), **extra}


def _layers(manifest: bytes | None) -> list[dict[str, Any]]:
    if manifest is None:
        return []
    layers = _json(manifest, "attestation manifest").get("layers")
    return [x for x in layers if isinstance(x, dict)] if isinstance(layers, list) else []


def lock_dir() -> Path:
    """Where ``attach`` keeps its lock files: ``locks`` in lockd's cache root, a directory only
    this user may write (a shared one such as /tmp would let another user plant the lock)."""
    return cache_root() / "locks"


def lock_path(ref: ImageRef) -> Path:
    """The lock file of ``ref``'s repository."""
    name = hashlib.sha256(f"{ref.host}/{ref.repository}".encode()).hexdigest()[:32]
    return lock_dir() / f"attach-{name}.lock"


@contextlib.contextmanager
def host_lock(ref: ImageRef) -> Iterator[None]:
    """Serialize read-modify-writes of one repository's tags by the writers of this host.

    Raises:
        InputError: the lock directory or file is not this user's alone (a symbolic link,
            another user's, writable by others).
    """
    path = lock_path(ref)
    directory = path.parent

    def refused(why: str) -> InputError:
        return InputError(
            f"{path}: the lock for attaching to {ref.host}/{ref.repository} is not used: {why}; "
            "it must be this user's alone (remove it, or set LOCKD_CACHE_DIR to a directory of "
            "yours)"
        )

    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise refused(e.strerror or str(e)) from e
    distrust = untrusted_directory(directory)
    if distrust is not None:
        raise refused(distrust[1])
    try:
        fd = open_own_file(path, os.O_WRONLY | os.O_CREAT, 0o600)
    except UntrustedFileError as e:
        raise refused(e.why) from e
    with os.fdopen(fd, "wb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def attach(image: str, envelope: bytes, *, registry: Registry | None = None) -> dict[str, Any]:
    """Store ``envelope`` next to ``image`` (see the module's docstring); a summary of what
    was written.

    Raises:
        InputError: the image reference is not pinned or has no registry.
        RegistryError: the registry cannot be reached, has no such image, or refuses a write.
    """
    ref = parse_ref(image)
    reg = registry or Registry(ref.host)
    subject = reg.manifest(ref.repository, ref.digest)
    if subject is None:
        raise RegistryError(f"{ref}: the registry has no such image manifest; push the image first")
    subject_bytes, subject_type = subject
    if _sha256(subject_bytes) != ref.digest:
        raise RegistryError(f"{ref}: the registry's manifest does not hash to the digest")
    layer = reg.push_blob(ref.repository, envelope)
    reg.push_blob(ref.repository, EMPTY)
    layer_descriptor = _descriptor(DSSE_MEDIA_TYPE, envelope)
    assert layer_descriptor["digest"] == layer
    referrer = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": _descriptor(EMPTY_MEDIA_TYPE, EMPTY),
        "layers": [layer_descriptor],
        "subject": _descriptor(subject_type or OCI_MANIFEST, subject_bytes),
        "annotations": {"dev.lockd.subject": ref.digest},
    }
    referrer_bytes = json.dumps(referrer, sort_keys=True, separators=(",", ":")).encode()
    referrer_digest = _sha256(referrer_bytes)
    reg.put_manifest(ref.repository, referrer_digest, referrer_bytes, OCI_MANIFEST)
    own_tag = f"{ref.tag_stem}.lockd-{layer.removeprefix('sha256:')[:16]}"
    reg.put_manifest(ref.repository, own_tag, referrer_bytes, OCI_MANIFEST)
    with host_lock(ref):
        tries = _merge_att_tag(reg, ref, layer_descriptor)
    return {
        "image": str(ref),
        "envelope": layer,
        "referrer": referrer_digest,
        "tags": [own_tag, f"{ref.tag_stem}.att"],
        "tries": tries,
    }


def attach_bundle(image: str, bundle: bytes, *, registry: Registry | None = None) -> dict[str, Any]:
    """Store a Sigstore bundle next to ``image`` as cosign does: an OCI 1.1 referrer whose
    artifactType and one layer are :data:`BUNDLE_MEDIA_TYPE`, and the same manifest under a tag
    of its own, ``sha256-<hex>.lockd-<16 hex of the bundle>``, for registries without the
    referrers API (found by :func:`fetch` either way). Call :func:`attach` for the envelope.

    Raises:
        InputError / RegistryError: as :func:`attach`.
    """
    ref = parse_ref(image)
    reg = registry or Registry(ref.host)
    subject = reg.manifest(ref.repository, ref.digest)
    if subject is None:
        raise RegistryError(f"{ref}: the registry has no such image manifest; push the image first")
    if _sha256(subject[0]) != ref.digest:
        raise RegistryError(f"{ref}: the registry's manifest does not hash to the digest")
    layer = reg.push_blob(ref.repository, bundle)
    reg.push_blob(ref.repository, EMPTY)
    referrer = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_MEDIA_TYPE,
        "config": _descriptor(EMPTY_MEDIA_TYPE, EMPTY),
        "layers": [_descriptor(BUNDLE_MEDIA_TYPE, bundle)],
        "subject": _descriptor(subject[1] or OCI_MANIFEST, subject[0]),
        "annotations": {"dev.lockd.subject": ref.digest},
    }
    body = json.dumps(referrer, sort_keys=True, separators=(",", ":")).encode()
    reg.put_manifest(ref.repository, _sha256(body), body, OCI_MANIFEST)
    own_tag = f"{ref.tag_stem}.lockd-{layer.removeprefix('sha256:')[:16]}"
    reg.put_manifest(ref.repository, own_tag, body, OCI_MANIFEST)
    return {"image": str(ref), "bundle": layer, "referrer": _sha256(body), "tags": [own_tag]}


def _merge_att_tag(reg: Registry, ref: ImageRef, layer: dict[str, Any]) -> int:
    """Add ``layer`` to cosign's ``.att`` tag: read, merge, write, read again until it stays."""
    tag = f"{ref.tag_stem}.att"
    for attempt in range(1, ATTACH_TRIES + 1):
        current = reg.manifest(ref.repository, tag)
        layers = _layers(current[0] if current else None)
        if not any(x.get("digest") == layer["digest"] for x in layers):
            layers.append(layer)
            merged = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": _descriptor(EMPTY_MEDIA_TYPE, EMPTY),
                "layers": layers,
            }
            body = json.dumps(merged, sort_keys=True, separators=(",", ":")).encode()
            reg.put_manifest(ref.repository, tag, body, OCI_MANIFEST)
        time.sleep(random.uniform(0.0, 0.02) * attempt)  # noqa: S311 (jitter, not a secret)
        again = reg.manifest(ref.repository, tag)
        if any(x.get("digest") == layer["digest"] for x in _layers(again[0] if again else None)):
            return attempt
    raise RegistryError(
        f"{ref}: the tag {tag} kept changing under {ATTACH_TRIES} attempts; the attestation is "
        f"stored (tag {ref.tag_stem}.lockd-…) but not in cosign's tag: attach it again"
    )


def fetch(image: str, *, registry: Registry | None = None) -> list[bytes]:
    """Every distinct envelope and Sigstore bundle stored next to ``image``: referrers, lockd's
    own tags, cosign's ``.att`` tag (DSSE and bundle layers only), in that order.

    Raises:
        InputError: the image reference is not pinned or has no registry.
        RegistryError: the registry cannot be reached or answers garbage.
    """
    ref = parse_ref(image)
    reg = registry or Registry(ref.host)
    manifests: list[bytes] = []
    for kind in (ARTIFACT_TYPE, BUNDLE_MEDIA_TYPE):
        for descriptor in reg.referrers(ref.repository, ref.digest, kind) or []:
            if descriptor.get("artifactType") == kind and isinstance(descriptor.get("digest"), str):
                got = reg.manifest(ref.repository, descriptor["digest"])
                if got is not None:
                    manifests.append(got[0])
    prefix = f"{ref.tag_stem}.lockd-"
    for tag in sorted(t for t in reg.tags(ref.repository) if t.startswith(prefix)):
        got = reg.manifest(ref.repository, tag)
        if got is not None:
            manifests.append(got[0])
    att = reg.manifest(ref.repository, f"{ref.tag_stem}.att")
    if att is not None:
        manifests.append(att[0])
    seen: dict[str, bytes] = {}
    for manifest in manifests:
        for layer in _layers(manifest):
            digest = layer.get("digest")
            if layer.get("mediaType") not in _READ or not isinstance(digest, str):
                continue
            if digest not in seen and re.match(r"^sha256:[0-9a-f]{64}$", digest):
                seen[digest] = reg.blob(ref.repository, digest)
    return list(seen.values())
