"""--deep on a target: the source its files are read from, the integrity result kept between
runs, the hashing overlapped with the probe, and refusing to sign what disagrees."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from lockd.errors import RefusedError, TargetError
from lockd.evidence.cache import integrity as integritycache
from lockd.evidence.cache.integrity import Guard
from lockd.evidence.cache.layers import DigestCache, LayerView, cache_dir, container_layer_keys
from lockd.evidence.integrity.archive import ArchiveSource
from lockd.evidence.integrity.check import (
    Dist,
    EarlyHashes,
    Hasher,
    ProgressBar,
    check_files,
    find_dist_infos,
    hash_jobs,
    hashing_pools,
    owners_of,
    run_check,
)
from lockd.evidence.integrity.hosttree import HostTree, Source, TooLargeError
from lockd.evidence.integrity.records import MAX_RECORD_BYTES, is_under, parse_record
from lockd.judgement.policy import DEFAULT_IGNORE
from lockd.model.report import Finding

if TYPE_CHECKING:
    from lockd.evidence.targets.base import HostFiles, ProbeOptions, Running, Target
    from lockd.model.host import TargetInfo
    from lockd.model.manifest import Observation


# --- targets ------------------------------------------------------------------------------------


def open_source(target: Target, *, cache: bool = True) -> Source:
    """Where ``target``'s files can be read (``Target.files``): on the host when lockd can,
    else through the Docker API (``LOCKD_DEEP_SOURCE=api`` forces the API for a target that
    has it: a container or an image). With ``cache``, files of an image's read-only layers
    read on the host go through the layer cache (lockd.evidence.cache.layers).

    Raises:
        TargetError: a target lockd cannot read the files of, or the daemon failed.
    """
    files = target.files()
    force_api = os.environ.get("LOCKD_DEEP_SOURCE", "") == "api" and files.archive is not None
    if files.host is not None and not force_api:
        return _host_tree(files.host, cache=cache)
    if files.archive is None:
        raise TargetError(f"{target.info.ref}: lockd cannot read this target's files for --deep")
    holder = files.archive()
    fetch = holder.__enter__()
    return ArchiveSource(fetch, files.archive_description, closer=holder)


def _host_tree(host: HostFiles, *, cache: bool) -> HostTree:
    """The files ``host`` describes, read on this host."""
    if host.kind == "local":
        return HostTree(
            list(host.roots), kind="local", evidence="inside", description=host.description
        )
    if host.kind == "overlay":
        assert host.upper is not None
        view = _layer_view(host, host.upper, keyed=cache)
        return HostTree(
            list(host.roots),
            kind="overlay",
            evidence="host",
            description=host.description,
            check_opened=True,
            upper=host.upper,
            mounts=host.mounts,
            digests=DigestCache(cache_dir()) if cache and view is not None else None,
            view=view,
        )
    image = host.image() if cache and host.image is not None else None
    keys = None if image is None else container_layer_keys(host.roots, image)
    return HostTree(
        list(host.roots),
        kind="layers",
        evidence="host",
        description=host.description,
        immutable=True,
        digests=None if keys is None else DigestCache(cache_dir()),
        layer_keys=keys or (),
    )


def _layer_view(host: HostFiles, upper: str, *, keyed: bool) -> LayerView | None:
    """A container's overlay layers, read straight from the host: its upper directory,
    then its lower ones, by chain ID where ``keyed`` (the layer cache) and the daemon's
    answers say which layer is which; None when the first directory is not ``upper``."""
    layers = host.layers
    if not layers or os.path.realpath(layers[0]) != os.path.realpath(upper):
        return None
    image = host.image() if keyed and host.image is not None else None
    keys = None if image is None else container_layer_keys(layers[1:], image)
    lower: Sequence[str | None] = keys or [None] * len(layers[1:])
    return LayerView([(layers[0], None), *zip(layers[1:], lower, strict=True)])


def deepen(
    target: Target,
    observation: Observation,
    *,
    ignore: Sequence[str] = DEFAULT_IGNORE,
    progress: bool | None = None,
    cache: bool = True,
) -> Observation:
    """``observation`` (of ``target``) with ``integrity``: its files against their RECORDs.

    Raises:
        TargetError: the target's files cannot be read.
    """
    source = open_source(target, cache=cache)
    try:
        distributions = observation.probe.distributions if observation.probe else []
        found = check_files(source, distributions, ignore=ignore, progress=progress)
    finally:
        source.close()
    return observation.model_copy(update={"integrity": found})


class DeepTarget:
    """A target whose ``observe()`` also checks every installed file against its RECORD
    (``Observation.integrity``), hashing the usual locations while the probe runs."""

    def __init__(
        self,
        target: Target,
        *,
        ignore: Sequence[str] = DEFAULT_IGNORE,
        progress: bool | None = None,
        cache: bool = True,
        family_imports: bool = False,
        options: ProbeOptions | None = None,
    ) -> None:
        """``cache``: use the layer cache (lockd.evidence.cache.layers) where the files are read on
        the host; False hashes every file. ``family_imports``: the probe also runs the PyTorch
        family's import smoke test (lockd.evidence.smoke.observe). ``options``: the probe's
        (with ``reuse``, a container's kept results may be reused: its probe report, and
        with ``cache`` this check's, lockd.evidence.cache.integrity)."""
        from lockd.evidence.targets.base import PLAIN

        self.target = target
        self.info: TargetInfo = target.info
        self.ignore = list(ignore)
        self.progress = progress
        self.cache = cache
        self.family_imports = family_imports
        self.options = options or PLAIN

    def observe(self) -> Observation:
        """Raises what the target's ``observe()`` raises, and TargetError when its files cannot
        be read."""
        kept, under = self._kept()
        if kept is not None and kept.intact():
            observation = self._observe()
            probe = observation.probe
            if (
                integritycache.distributions_digest(probe.distributions if probe else [])
                == kept.distributions
            ):
                found = kept.integrity.model_copy(update={"reused_from": kept.observed_at})
                return observation.model_copy(update={"integrity": found})
            return deepen(self.target, observation, ignore=self.ignore, cache=self.cache)
        observation, guards = self._hash_while_observing()
        if any(under) and guards is not None and observation.integrity is not None:
            self._keep(under, observation, guards)
        return observation

    def _reusing(self) -> Running | None:
        """The target, when it is a running container verified with the caches on (its probe
        report may be reused too): only then is its result kept (lockd.evidence.cache.integrity)."""
        if not self.cache or not self.options.reuse:
            return None
        return self.target.running()

    def _kept(self) -> tuple[integritycache.Kept | None, integritycache.Keys]:
        """(the integrity cache's result for the target or None, the fingerprints looked
        under)."""
        container = self._reusing()
        if container is None:
            return None, integritycache.Keys(None, None)
        return integritycache.load_first(container.id, container.inspect(), self.ignore)

    def _keep(
        self, under: integritycache.Keys, observation: Observation, guards: list[Guard]
    ) -> None:
        """Keep the result under each fingerprint that did not change while lockd hashed."""
        found = observation.integrity
        container = self._reusing()
        assert found is not None and container is not None
        if found.source != "overlay":
            return
        probe = observation.probe
        dists = integritycache.distributions_digest(probe.distributions if probe else [])
        attrs = container.inspect()
        after = integritycache.keys(attrs, self.ignore)
        rests_on = integritycache.places(observation)
        for name, key in integritycache.still_standing(container.id, under, after, attrs, rests_on):
            integritycache.store(name, key, found, dists, guards, rests_on)

    def _hash_while_observing(self) -> tuple[Observation, list[Guard] | None]:
        """The observation with its integrity, hashing the usual locations while the probe
        runs; the guards of the lower-layer files and directories read
        (lockd.evidence.cache.integrity), None where the files were not read in layers."""
        source = open_source(self.target, cache=self.cache)
        guards = None
        bar = ProgressBar(self.progress)
        source.on_bytes = bar.advance if source.kind == "api" else None
        try:
            with (
                hashing_pools() as pools,
                ThreadPoolExecutor(1, thread_name_prefix="lockd-probe") as probing,
            ):
                hasher = Hasher(source, pools, bar)
                observing = probing.submit(self._observe)
                early = EarlyHashes()
                guessed = self._speculate(source, hasher, early)
                try:
                    observation = observing.result()
                except BaseException:
                    hasher.cancel(lambda _: False)
                    raise
                probe = observation.probe
                named = {d.location for d in probe.distributions} if probe else set()
                wasted = [g for g in guessed if g not in named]
                hasher.cancel(lambda path: not any(is_under(path, g) for g in wasted))
                found = run_check(
                    source, probe.distributions if probe else [], self.ignore, hasher, early
                )
            if isinstance(source, HostTree):
                guards = source.lower_guards()
        finally:
            bar.stop()
            source.close()
        return observation.model_copy(update={"integrity": found}), guards

    def _observe(self) -> Observation:
        if not self.family_imports:
            return self.target.observe(self.options)
        from lockd.evidence.smoke import observe

        return observe(self.target, self.options)

    @staticmethod
    def _speculate(source: Source, hasher: Hasher, early: EarlyHashes) -> list[str]:
        """Start hashing what the RECORDs of the usual locations list, and walk their
        distributions' directories meanwhile (kept in ``early``); those locations."""
        locations = source.guess_locations()
        dists: list[Dist] = []
        for location in locations:
            early.dist_infos[location] = find_dist_infos(source, location)
            for name, directory in early.dist_infos[location].items():
                record_path = f"{directory}/RECORD"
                try:
                    data = source.read(record_path, MAX_RECORD_BYTES)
                except (OSError, TooLargeError):
                    continue
                if data is not None:
                    early.records[record_path] = data
                    parsed = early.rows[(record_path, location)] = parse_record(
                        data, record_path, location
                    )
                    dists.append(Dist(name, location, record_path, parsed[0]))
        hasher.submit(hash_jobs(dists))
        for directory in owners_of(dists):
            early.walks[directory] = list(source.files(directory))
        return locations


def describe(finding: Finding) -> str:
    """A finding on one line, for people."""
    text = f"{finding.kind} {finding.path or finding.name or ''}"
    if finding.name and finding.path:
        text += f" ({finding.name})"
    return text + (f": {finding.message}" if finding.message else "")


def require_intact(observation: Observation, shown: int = 20) -> None:
    """Raises RefusedError (exit 1) when ``--deep`` found files that disagree with their
    RECORD (or RECORDs that are malformed): lockd signs no such environment."""
    found = observation.integrity
    if found is None or (not found.findings and not found.omitted):
        return
    count = len(found.findings) + found.omitted
    lines = [describe(f) for f in found.findings[:shown]]
    if count > len(lines):
        lines.append(f"... and {count - len(lines)} more")
    raise RefusedError(
        f"{observation.target.ref}: refusing to sign: {count} installed file(s) or RECORD(s) "
        "disagree with what the packages shipped; reinstall them or rebuild the image, then "
        "record again:\n  " + "\n  ".join(lines)
    )
