"""Deep integrity (``--deep``): every file a distribution's RECORD lists, hashed again.

A RECORD (PEP 376, the wheel spec) lists each file the installer wrote with its digest
(``sha256=<urlsafe base64, no padding>``) and size. lockd reads every RECORD of the target,
hashes every file it lists with a hash (the RECORD itself and ``.pyc`` files carry none and are
skipped) and reports, under the check ``integrity``:

* ``modified``: a file whose digest or size differs, or that is no longer a regular file;
* ``missing``: a listed file that is gone;
* ``unlisted``: a file inside a distribution's own top-level directories (``torch/``,
  ``torch-2.13.0+cpu.dist-info/``) that no RECORD lists, unless the policy's filesystem ignore
  patterns cover it (``**/__pycache__/**`` by default);
* ``unstable``: a file written to or replaced while lockd hashed it; ``unreadable``;
* ``record-malformed`` (naming the RECORD and the line), ``record-missing``,
  ``record-mismatch`` (the RECORD lockd read is not the one the probe reported).

Where the bytes come from (``Integrity.source``), most trusted first:

* ``overlay``: a running container's overlay2 merged directory, read on the Docker host (lockd
  running there as root): the container cannot lie about it;
* ``layers``: an image's overlay2 layer directories, merged as overlayfs merges them
  (whiteouts, opaque directories), without starting anything;
* ``api``: the Docker daemon's archive API (what ``docker cp`` uses), a tar stream hashed as it
  arrives, where lockd cannot read the daemon's storage (not root, a remote daemon, another
  storage driver). ``LOCKD_DEEP_SOURCE=api`` forces it;
* ``local``: the local environment's own files (evidence from inside).

The probe says where each distribution lives and the sha256 of its RECORD; lockd reads the
RECORD itself from the same place as the files and reports when the two differ. Symbolic links
are resolved inside the target's root, never on the host, and a file opened in a running
container's merged directory is checked to be the file meant (a directory swapped for a link
meanwhile cannot redirect lockd to a file of the host).

Files of an image's read-only layers read on the host (``overlay``, ``layers``) go through the
layer cache (lockd.evidence.cache.layers: digests keyed by layer chain ID and path, guarded by size,
mtime, ctime and inode); a container's own writes (its upper directory) are always hashed, and
``Integrity.cached`` counts the digests taken from the cache. ``--no-cache`` hashes every file.

Hashing runs in a thread pool (hashlib releases the GIL on large buffers), reads 1 MiB at a
time into one buffer per thread and starts with the largest files. ``DeepTarget`` overlaps it
with the probe: the distributions of the usual site-packages directories are hashed while the
probe still runs, and the results kept for the locations the probe then names.
"""
