"""lockd.trust.merkle: RFC 9162 tree heads and proofs, against the test vectors of
transparency-dev/merkle (proof/verify_test.go, the RFC 6962 tree of 8 leaves) and against an
independent implementation written here from the RFC's definitions (recursive, on lists: not
lockd's code)."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from lockd.errors import InputError
from lockd.trust import merkle
from lockd.trust.merkle import (
    EMPTY_ROOT,
    Frontier,
    LeafNodes,
    MemoryTree,
    ProofError,
    consistency_proof,
    inclusion_proof,
    tree_root,
    verify_consistency,
    verify_inclusion,
)

# --- the independent implementation: RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1 read literally ----------


def rfc_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + rfc_mth(d[:k]) + rfc_mth(d[k:])).digest()


def rfc_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*rfc_path(m, d[:k]), rfc_mth(d[k:])]
    return [*rfc_path(m - k, d[k:]), rfc_mth(d[:k])]


def rfc_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [rfc_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*rfc_subproof(m, d[:k], b), rfc_mth(d[k:])]
    return [*rfc_subproof(m - k, d[k:], False), rfc_mth(d[:k])]


# --- the vectors: transparency-dev/merkle proof/verify_test.go --------------------------------

LEAVES = [
    bytes.fromhex(h)
    for h in (
        *("", "00", "10", "2021", "3031", "40414243", "5051525354555657"),
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index, tree size, proof): the Go file numbers leaves from 1; these from 0.
INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (0, 1, []),
]
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]
TREE = MemoryTree.of(LEAVES)


def h(hexes: list[str]) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


def root(size: int) -> bytes:
    return bytes.fromhex(ROOTS[size - 1])


def test_the_rfc_6962_roots_of_the_eight_leaf_tree() -> None:
    assert [tree_root(n, TREE).hex() for n in range(1, 9)] == ROOTS
    assert (
        tree_root(0, TREE)
        == EMPTY_ROOT
        == bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    )


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_vectors_and_verify(
    index: int, size: int, proof: list[str]
) -> None:
    assert inclusion_proof(index, size, TREE) == h(proof)
    verify_inclusion(index, size, merkle.leaf_hash(LEAVES[index]), h(proof), root(size))


@pytest.mark.parametrize(("first", "second", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_vectors_and_verify(
    first: int, second: int, proof: list[str]
) -> None:
    assert consistency_proof(first, second, TREE) == h(proof)
    verify_consistency(first, second, root(first), root(second), h(proof))


def _inclusion_probes(
    index: int, size: int, proof: list[bytes], top: bytes
) -> list[tuple[str, int, int, bytes, list[bytes], bytes]]:
    """transparency-dev's corruptInclusionProof: each must fail."""
    leaf = merkle.leaf_hash(LEAVES[index])
    other = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
    probes = [
        ("index + 1", index + 1, size, leaf, proof, top),
        ("index ^ 2", index ^ 2, size, leaf, proof, top),
        ("size * 2", index, size * 2, leaf, proof, top),
        ("size // 2", index, size // 2, leaf, proof, top),
        ("wrong leaf", index, size, merkle.leaf_hash(b"WrongLeaf"), proof, top),
        ("empty root", index, size, leaf, proof, EMPTY_ROOT),
        ("random root", index, size, leaf, proof, other),
        ("trailing root", index, size, leaf, [*proof, top], top),
        ("preceding root", index, size, leaf, [top, *proof], top),
        ("trailing garbage", index, size, leaf, [*proof, b""], top),
    ]
    if index > 0:
        probes.append(("index - 1", index - 1, size, leaf, proof, top))
    for i in range(len(proof)):
        flipped = [*proof]
        flipped[i] = bytes([proof[i][0] ^ 8]) + proof[i][1:]
        probes.append((f"proof[{i}] bit 3", index, size, leaf, flipped, top))
    if proof:
        probes.append(("removed component", index, size, leaf, proof[:-1], top))
    if len(proof) > 1:
        probes.append(("inserted component", index, size, leaf, [proof[0], other, *proof[1:]], top))
    return probes


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION[:4])
def test_a_corrupted_inclusion_proof_never_verifies(
    index: int, size: int, proof: list[str]
) -> None:
    for desc, i, n, leaf, path, top in _inclusion_probes(index, size, h(proof), root(size)):
        with pytest.raises((ProofError, InputError)):
            verify_inclusion(i, n, leaf, path, top)
            pytest.fail(f"verified against {desc}")


@pytest.mark.parametrize(("first", "second", "proof"), CONSISTENCY[1:])
def test_a_corrupted_consistency_proof_never_verifies(
    first: int, second: int, proof: list[str]
) -> None:
    r1, r2, path = root(first), root(second), h(proof)
    probes = [
        ("first - 1", first - 1, second, r1, r2, path),
        ("first + 1", first + 1, second, r1, r2, path),
        ("first ^ 2", first ^ 2, second, r1, r2, path),
        ("second * 2", first, second * 2, r1, r2, path),
        ("wrong first root", first, second, merkle.leaf_hash(b"WrongRoot"), r2, path),
        ("wrong second root", first, second, r1, merkle.leaf_hash(b"WrongRoot"), path),
        ("swapped roots", first, second, r2, r1, path),
        ("empty proof", first, second, r1, r2, []),
        ("trailing root1", first, second, r1, r2, [*path, r1]),
        ("preceding root2", first, second, r1, r2, [r2, *path]),
        ("preceding proof[0]", first, second, r1, r2, [path[0], *path]),
        ("truncated", first, second, r1, r2, path[:-1]),
    ]
    for i in range(len(path)):
        flipped = [*path]
        flipped[i] = bytes([path[i][0] ^ 16]) + path[i][1:]
        probes.append((f"proof[{i}] bit 4", first, second, r1, r2, flipped))
    for desc, m, n, a, b, p in probes:
        with pytest.raises((ProofError, InputError)):
            verify_consistency(m, n, a, b, p)
            pytest.fail(f"verified against {desc}")


def test_the_trivial_consistency_cases() -> None:
    a, b = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, b, [])
    verify_consistency(3, 3, a, a, [])
    with pytest.raises(ProofError, match=r"^the tree of size 3 .* the same size with another root"):
        verify_consistency(3, 3, a, b, [])
    with pytest.raises(ProofError, match=r"^a consistency proof between equal sizes \(3\)"):
        verify_consistency(3, 3, a, a, [a])
    with pytest.raises(ProofError, match="^a consistency proof from the empty tree must be empty"):
        verify_consistency(0, 2, EMPTY_ROOT, b, [a])
    with pytest.raises(InputError, match=r"^sizes 2 and 1: a consistency proof goes from a"):
        verify_consistency(2, 1, a, b, [])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: inclusion_proof(8, 8, TREE), "index 8: the tree of size 8 has leaves 0 to 7"),
        (lambda: inclusion_proof(0, 0, TREE), "index 0: the tree of size 0 has no leaves"),
        (lambda: inclusion_proof(-1, 8, TREE), "index -1: give a whole number from 0 to"),
        (lambda: tree_root(2**63, TREE), "size 9223372036854775808: give a whole number"),
        (lambda: tree_root(True, TREE), "size True: give a whole number"),
        (lambda: consistency_proof(5, 4, TREE), "sizes 5 and 4: a consistency proof goes"),
        (lambda: tree_root(9, TREE), "leaves 8 to 8 are beyond the tree's 8 leaves"),
    ],
)
def test_bad_sizes_and_indexes_are_refused(call: object, message: str) -> None:
    with pytest.raises(InputError) as raised:
        call()  # type: ignore[operator]
    assert str(raised.value).startswith(message)


def test_hashes_of_the_wrong_length_are_refused() -> None:
    leaf = merkle.leaf_hash(b"x")
    with pytest.raises(ProofError, match="^the leaf hash is not a 32-byte SHA-256 hash$"):
        verify_inclusion(0, 1, leaf[:31], [], leaf)
    with pytest.raises(ProofError, match="^proof element 0 is not a 32-byte SHA-256 hash$"):
        verify_inclusion(0, 2, leaf, [b"short"], leaf)
    with pytest.raises(ProofError, match="^the second root hash is not a 32-byte"):
        verify_consistency(1, 2, leaf, b"", [leaf])


def test_lockd_agrees_with_the_rfc_read_literally_up_to_40_leaves() -> None:
    data = [f"entry {i}".encode() for i in range(40)]
    tree = MemoryTree.of(data)
    for n in range(0, 41):
        top = tree_root(n, tree)
        assert top == rfc_mth(data[:n]), n
        for m in range(n):
            path = inclusion_proof(m, n, tree)
            assert path == rfc_path(m, data[:n]), (m, n)
            verify_inclusion(m, n, merkle.leaf_hash(data[m]), path, top)
        for m in range(1, n + 1):
            proof = consistency_proof(m, n, tree)
            assert proof == (rfc_subproof(m, data[:n], True) if m < n else []), (m, n)
            verify_consistency(m, n, rfc_mth(data[:m]), top, proof)


def test_a_proof_for_one_tree_does_not_verify_for_another() -> None:
    data = [f"entry {i}".encode() for i in range(13)]
    forged = [*data]
    forged[4] = b"entry 4, rewritten"
    honest, rewritten = MemoryTree.of(data), MemoryTree.of(forged)
    old_root = tree_root(6, honest)
    for n in range(6, 14):
        with pytest.raises(ProofError, match=r"^the tree of size 6 \(root [0-9a-f]{64}\) is not"):
            verify_consistency(
                6, n, old_root, tree_root(n, rewritten), consistency_proof(6, n, rewritten)
            )


def test_the_frontier_gives_every_root_and_every_perfect_subtree() -> None:
    data = [f"entry {i}".encode() for i in range(70)]
    frontier = Frontier()
    stored: dict[merkle.Node, bytes] = {}
    for i, d in enumerate(data):
        stored[(0, i)] = merkle.leaf_hash(d)
        for node, value in frontier.append(merkle.leaf_hash(d)):
            assert node not in stored
            stored[node] = value
        assert frontier.root() == rfc_mth(data[: i + 1])
        assert frontier.hashes == [stored[n] for n in frontier.nodes()]
    reopened = Frontier(frontier.size, frontier.hashes)
    assert reopened.root() == rfc_mth(data)
    # every perfect subtree of 70 leaves: 70 + 35 + 17 + 8 + 4 + 2 + 1
    assert len(stored) == 137
    for (level, index), value in stored.items():
        assert value == rfc_mth(data[index << level : (index + 1) << level])


def test_a_frontier_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(InputError, match="^a tree of size 3 has 2 frontier hashes, not 1$"):
        Frontier(3, [EMPTY_ROOT])


def test_leaf_nodes_read_leaf_hashes_in_ranges_and_remember_subtrees() -> None:
    data = [f"entry {i}".encode() for i in range(100)]
    hashes = [merkle.leaf_hash(d) for d in data]
    reads: list[tuple[int, int]] = []

    def leaf_hashes(start: int, end: int) -> list[bytes]:
        reads.append((start, end))
        return hashes[start:end]

    source = LeafNodes(leaf_hashes, 100)
    assert tree_root(100, source) == rfc_mth(data)
    first = len(reads)
    assert first <= 100 // 16 + 4
    for m, n in itertools.product((3, 50, 64), (64, 99, 100)):
        if m <= n:
            assert consistency_proof(m, n, source) == consistency_proof(m, n, MemoryTree.of(data))
    assert inclusion_proof(99, 100, source) == rfc_path(99, data)
