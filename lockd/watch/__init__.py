"""``lockd watch``: a host agent that keeps every running container verified.

One module per concept: :mod:`options` (what the command line asks for), :mod:`discovery`
(containers as the daemon lists and inspects them), :mod:`events` (the daemon's event stream,
followed and coalesced), :mod:`prober` (the inside probe), :mod:`verifier` (manifests from the
service, cached on disk; the verdict), :mod:`spool` (the on-disk queue of batches for the
service), :mod:`metrics` (Prometheus text), :mod:`agent` (the loop that ties them together) and
:mod:`run` (an agent from the options). What must change before a container is probed again
is the ``watch`` fingerprint of :mod:`lockd.evidence.cache.fingerprint`. The daemon is asked
through lockd's Docker interface, :mod:`lockd.evidence.docker`.
"""
