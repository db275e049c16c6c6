"""What lockd keeps between runs, and the rules that decide when a kept result may be reused.

* ``store``: the one kept-store (a cache's directory and its trust, the entry format, limits,
  atomic writes, eviction; problems logged once under ``lockd.cache``);
* ``guard``: the one "unchanged" guard (size, mtime, ctime, inode, mode of an ``lstat``), of a
  file, of many, of a whole tree;
* ``fingerprint``: the one container fingerprint, with its named strategies (``exact``,
  ``sibling``, ``watch``), and the rule for taking and keeping an answer under it;
* the caches: ``probe`` (probe reports), ``integrity`` (``--deep`` results), ``layers`` (digests
  of image-layer files), ``hashes`` (digests of the files a running workload maps, #17).

Caches never weaken a verdict: a kept result is reused only when every input it rests on is
read again on the host, from places the container cannot redirect, and found unchanged.
"""
