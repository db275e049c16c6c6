"""The audit log's Merkle tree: RFC 9162 (RFC 6962's) hashing, tree heads, inclusion and
consistency proofs, generated and verified. Pure: no I/O.

A leaf's hash is ``SHA-256(0x00 || data)``, an inner node's ``SHA-256(0x01 || left || right)``,
the empty tree's ``SHA-256("")``. The tree over leaves ``D[0:n]`` splits at the largest power of
two below ``n``, so every node of it is a *perfect subtree* (``2**level`` leaves starting at
``index * 2**level``) or a right edge made of a few of them. Everything here is computed from
perfect subtrees, asked for all at once from a :class:`NodeSource`: the store keeps them (one
query per proof), :class:`LeafNodes` computes them from leaf hashes, :class:`MemoryTree` holds a
small tree in memory. :class:`Frontier` (the compact range) appends leaves in O(log n) and says
which perfect subtrees each append completes.

Proof generation follows RFC 9162 §2.1.3.1 (PATH) and §2.1.4.1 (SUBPROOF); verification its
§2.1.3.2 and §2.1.4.2 algorithms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from lockd.errors import InputError, LockdError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
MAX_SIZE = 2**63 - 1  # sizes and indexes are uint64 in RFC 9162; lockd's fit in 63 bits

Node = tuple[
    int, int
]  # (level, index): the perfect subtree over leaves [index*2**level, +2**level)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_SIZE",
    "Frontier",
    "LeafNodes",
    "MemoryTree",
    "Node",
    "NodeSource",
    "ProofError",
    "consistency_nodes",
    "consistency_proof",
    "inclusion_nodes",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_nodes",
    "root_from_inclusion",
    "tree_root",
    "verify_consistency",
    "verify_inclusion",
]


class ProofError(LockdError):
    """A proof does not verify: the trees it joins are not what it claims (exit 1)."""

    exit_code = 1


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 §2.1.1: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def range_nodes(start: int, end: int) -> list[Node]:
    """The perfect subtrees whose hashes make ``MTH(D[start:end])`` for a range the RFC's
    recursion produces (``start`` a multiple of the largest power of two not above
    ``end - start``): largest first, hashed together right to left."""
    nodes: list[Node] = []
    while start < end:
        level = (end - start).bit_length() - 1
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


def _fold(hashes: Sequence[bytes]) -> bytes:
    """The hash of a range from its perfect subtrees (largest first)."""
    if not hashes:
        return EMPTY_ROOT
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


class NodeSource(Protocol):
    """Whatever holds a tree's perfect subtrees."""

    def nodes(self, wanted: Sequence[Node]) -> Mapping[Node, bytes]:
        """The hash of each of ``wanted`` (every one of them, or raise)."""
        ...


def _check_size(size: int, what: str = "size") -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE:
        raise InputError(f"{what} {size!r}: give a whole number from 0 to {MAX_SIZE}")


def tree_root(size: int, source: NodeSource) -> bytes:
    """``MTH(D[0:size])``, the tree head's root hash (the empty tree's for size 0)."""
    _check_size(size)
    wanted = range_nodes(0, size)
    found = source.nodes(wanted)
    return _fold([found[n] for n in wanted])


# --- inclusion ----------------------------------------------------------------------------------


def _path_ranges(index: int, start: int, end: int) -> list[tuple[int, int]]:
    """RFC 9162 §2.1.3.1 PATH(m, D[start:end]), as the ranges whose hashes are its elements."""
    ranges: list[tuple[int, int]] = []
    while end - start > 1:
        k = _split(end - start)
        if index - start < k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()  # the recursion appends on the way back up: the leaf's sibling first
    return ranges


def _check_index(index: int, size: int) -> None:
    _check_size(size)
    _check_size(index, "index")
    if index >= size:
        has = f"leaves 0 to {size - 1}" if size else "no leaves"
        raise InputError(f"index {index}: the tree of size {size} has {has}")


def inclusion_nodes(index: int, size: int) -> list[Node]:
    """Every perfect subtree an inclusion proof of leaf ``index`` in the tree of ``size``
    needs (ask a :class:`NodeSource` for them at once)."""
    _check_index(index, size)
    return [n for a, b in _path_ranges(index, 0, size) for n in range_nodes(a, b)]


def inclusion_proof(index: int, size: int, source: NodeSource) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` (RFC 9162 §2.1.3.1).

    Raises:
        InputError: ``index`` is not below ``size``, or either is not a whole number.
    """
    ranges = _path_ranges(index, 0, size) if size > index >= 0 else []
    found = source.nodes(inclusion_nodes(index, size))
    return [_fold([found[n] for n in range_nodes(a, b)]) for a, b in ranges]


def _check_hashes(proof: Sequence[bytes], *named: tuple[str, bytes]) -> None:
    for what, value in named:
        if not isinstance(value, bytes) or len(value) != HASH_SIZE:
            raise ProofError(f"the {what} is not a {HASH_SIZE}-byte SHA-256 hash")
    for i, element in enumerate(proof):
        if not isinstance(element, bytes) or len(element) != HASH_SIZE:
            raise ProofError(f"proof element {i} is not a {HASH_SIZE}-byte SHA-256 hash")


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to from a leaf hash (RFC 9162 §2.1.3.2).

    Raises:
        InputError: ``index`` is not below ``size``.
        ProofError: the proof has the wrong length for the index and size, or a hash that is
            not 32 bytes.
    """
    _check_index(index, size)
    _check_hashes(proof, ("leaf hash", leaf))
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError(
                f"the inclusion proof of leaf {index} in a tree of size {size} is too long "
                f"({len(proof)} hashes)"
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            f"the inclusion proof of leaf {index} in a tree of size {size} is too short "
            f"({len(proof)} hashes)"
        )
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that the leaf hash ``leaf`` is leaf ``index`` of the tree of ``size`` whose root
    is ``root``.

    Raises:
        InputError: ``index`` is not below ``size``.
        ProofError: it is not (naming the index and size).
    """
    _check_hashes((), ("root hash", root))
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise ProofError(
            f"leaf {index} is not in the tree of size {size} with root {root.hex()}: the "
            "inclusion proof leads to another root"
        )


# --- consistency --------------------------------------------------------------------------------


def _subproof_ranges(first: int, size: int) -> list[tuple[int, int]]:
    """RFC 9162 §2.1.4.1 PROOF(first, D[0:size]), as the ranges whose hashes are its
    elements."""
    ranges: list[tuple[int, int]] = []
    start, end, whole = 0, size, True
    m = first
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            m -= k
            start += k
            whole = False
    if not whole:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def _check_sizes(first: int, second: int) -> None:
    _check_size(first, "first size")
    _check_size(second, "second size")
    if first > second:
        raise InputError(
            f"sizes {first} and {second}: a consistency proof goes from a smaller tree to a "
            "larger one"
        )


def consistency_nodes(first: int, second: int) -> list[Node]:
    """Every perfect subtree a consistency proof between the trees of ``first`` and
    ``second`` leaves needs."""
    _check_sizes(first, second)
    if first in (0, second):
        return []
    return [n for a, b in _subproof_ranges(first, second) for n in range_nodes(a, b)]


def consistency_proof(first: int, second: int, source: NodeSource) -> list[bytes]:
    """The proof that the tree of ``first`` leaves is a prefix of the tree of ``second``
    (RFC 9162 §2.1.4.1; empty when ``first`` is 0 or equals ``second``).

    Raises:
        InputError: ``first`` > ``second``, or either is not a whole number.
    """
    wanted = consistency_nodes(first, second)
    if not wanted:
        return []
    found = source.nodes(wanted)
    return [
        _fold([found[n] for n in range_nodes(a, b)]) for a, b in _subproof_ranges(first, second)
    ]


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``first`` leaves with root ``first_root`` is a prefix of the tree
    of ``second`` leaves with root ``second_root`` (RFC 9162 §2.1.4.2).

    Raises:
        InputError: ``first`` > ``second``.
        ProofError: it is not, naming both sizes.
    """
    _check_sizes(first, second)
    _check_hashes(proof, ("first root hash", first_root), ("second root hash", second_root))
    not_prefix = (
        f"the tree of size {first} (root {first_root.hex()}) is not a prefix of the tree of "
        f"size {second} (root {second_root.hex()})"
    )
    if first == second:
        if proof:
            raise ProofError(f"a consistency proof between equal sizes ({first}) must be empty")
        if first_root != second_root:
            raise ProofError(f"{not_prefix}: the same size with another root")
        return
    if first == 0:
        if proof:
            raise ProofError("a consistency proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError(f"{not_prefix}: the consistency proof is empty")
    path = list(proof)
    if first & (first - 1) == 0:  # a power of two: the first tree is a node of the second
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"{not_prefix}: the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"{not_prefix}: the consistency proof is too short")
    if fr != first_root or sr != second_root:
        raise ProofError(not_prefix)


# --- sources and appends ------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryTree:
    """A tree held in memory as its leaf hashes (tests, bundles, a verifier's own copy)."""

    leaves: tuple[bytes, ...]

    @classmethod
    def of(cls, data: Iterable[bytes]) -> MemoryTree:
        """The tree over these leaves' data."""
        return cls(tuple(leaf_hash(d) for d in data))

    def nodes(self, wanted: Sequence[Node]) -> Mapping[Node, bytes]:
        return LeafNodes(lambda a, b: self.leaves[a:b], len(self.leaves)).nodes(wanted)


class LeafNodes:
    """Perfect subtrees computed from leaf hashes, which ``leaf_hashes(start, end)`` gives for
    a range; the subtrees computed are remembered (a few thousand), so the proofs a verifier
    asks for one after another share their work."""

    def __init__(self, leaf_hashes: Callable[[int, int], Sequence[bytes]], size: int) -> None:
        _check_size(size)
        self._leaf_hashes = leaf_hashes
        self.size = size
        self._subtree = lru_cache(maxsize=4096)(self._compute)

    def _compute(self, level: int, index: int) -> bytes:
        start = index << level
        if start + (1 << level) > self.size:
            raise InputError(
                f"leaves {start} to {start + (1 << level) - 1} are beyond the tree's "
                f"{self.size} leaves"
            )
        if level == 0:
            return self._leaf(start)
        if level <= 4:  # 16 leaves or fewer: one read, hashed up here
            row = [bytes(h) for h in self._leaf_hashes(start, start + (1 << level))]
            while len(row) > 1:
                row = [node_hash(row[i], row[i + 1]) for i in range(0, len(row), 2)]
            return row[0]
        return node_hash(
            self._subtree(level - 1, 2 * index), self._subtree(level - 1, 2 * index + 1)
        )

    def _leaf(self, index: int) -> bytes:
        found = self._leaf_hashes(index, index + 1)
        if len(found) != 1:
            raise InputError(f"leaf {index} of the tree's {self.size} leaves is missing")
        return bytes(found[0])

    def nodes(self, wanted: Sequence[Node]) -> Mapping[Node, bytes]:
        return {node: self._subtree(*node) for node in wanted}


class Frontier:
    """The compact range of a tree: the roots of the perfect subtrees its ``size`` leaves
    decompose into (largest first), all an append needs.

    Its :meth:`append` returns the perfect subtrees above the leaves that the new leaf
    completes, so a store can keep every perfect subtree of the tree as it grows.
    """

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        _check_size(size)
        if len(hashes) != size.bit_count():
            raise InputError(
                f"a tree of size {size} has {size.bit_count()} frontier hashes, not {len(hashes)}"
            )
        self.size = size
        self.hashes = list(hashes)

    def append(self, leaf: bytes) -> list[tuple[Node, bytes]]:
        """Add a leaf hash: the perfect subtrees (level >= 1) it completes, lowest first."""
        completed: list[tuple[Node, bytes]] = []
        index, level, current = self.size, 0, leaf
        while index & (1 << level):  # the subtree of this level left of it is complete
            current = node_hash(self.hashes.pop(), current)
            level += 1
            completed.append(((level, index >> level), current))
        self.hashes.append(current)
        self.size += 1
        return completed

    def root(self) -> bytes:
        return _fold(self.hashes)

    def nodes(self) -> list[Node]:
        """The perfect subtrees the frontier's hashes are, largest first."""
        return range_nodes(0, self.size)
