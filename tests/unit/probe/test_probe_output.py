"""parse_probe_output: the probe's output is untrusted input, refused unless well-formed."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from lockd.errors import ProbeError
from lockd.evidence.targets.base import MAX_PROBE_OUTPUT, parse_probe_output

SHA = "a" * 64


def document() -> dict[str, Any]:
    return {
        "probe_version": 1,
        "python": {
            "version": "3.11.7",
            "implementation": "cpython",
            "executable": "/usr/bin/python3",
            "prefix": "/usr",
            "base_prefix": "/usr",
            "path": ["/usr/lib/python3.11", "/usr/lib/python3/dist-packages"],
            "platform": "linux",
        },
        "distributions": [
            {
                "name": "numpy",
                "version": "2.1.0",
                "installer": "pip",
                "location": "/usr/lib/python3/dist-packages",
                "record_sha256": SHA,
                "files": 900,
            },
            {
                "name": "torch",
                "version": "2.11.0",
                "installer": None,
                "location": "/usr/lib/python3/dist-packages",
                "record_sha256": None,
                "files": 0,
            },
        ],
        "os": {
            "id": "debian",
            "version_id": "12",
            "pretty_name": "Debian GNU/Linux 12 (bookworm)",
            "glibc": "2.36",
            "machine": "x86_64",
        },
        "env": {"CUDA_HOME": "/usr/local/cuda"},
        "torch": {"version": "2.11.0", "cuda": "13.0", "cudnn": "9.19.0"},
    }


def encode(value: object) -> bytes:
    return json.dumps(value).encode()


def edited(edit: Callable[[dict[str, Any]], object]) -> bytes:
    value = copy.deepcopy(document())
    edit(value)
    return encode(value)


def test_a_well_formed_document_parses() -> None:
    report = parse_probe_output(encode(document()), "container web-1")
    assert [d.name for d in report.distributions] == ["numpy", "torch"]
    assert report.torch is not None
    assert report.torch.cudnn == "9.19.0"


def test_surrounding_whitespace_is_fine() -> None:
    assert parse_probe_output(b"\n " + encode(document()) + b"\n\n", "x").probe_version == 1


def dist(name: str) -> dict[str, Any]:
    return {"name": name, "version": "1", "location": "/x", "files": 0}


BAD: list[tuple[str, bytes, str]] = [
    ("empty", b"", "probe printed nothing"),
    ("blank", b" \n\t\n", "probe printed nothing"),
    ("not json", b"Hello from sitecustomize\n{}", "probe printed invalid JSON: Expecting value"),
    ("two documents", encode(document()) * 2, "probe printed invalid JSON: Extra data"),
    ("truncated", encode(document())[:-10], "probe printed invalid JSON"),
    ("deeply nested", b"[" * 200_000, "probe printed invalid JSON"),
    ("json array", b"[]", "probe printed a JSON list, expected an object"),
    ("json string", b'"hello"', "probe printed a JSON str, expected an object"),
    (
        "invalid utf-8",
        b'{"probe_version": 1, "x": "\xff\xfe"}',
        "not UTF-8 (invalid byte at offset",
    ),
    (
        "oversized",
        b"{" + b" " * (17 * 1024 * 1024) + b"}",
        "probe output exceeds 16 MiB",
    ),
    (
        "missing python",
        edited(lambda d: d.pop("python")),
        "failed validation: python: Field required",
    ),
    (
        "wrong probe_version",
        edited(lambda d: d.update(probe_version=2)),
        "failed validation: probe_version: Input should be 1",
    ),
    (
        "probe_version as a string",
        edited(lambda d: d.update(probe_version="1")),
        "failed validation: probe_version",
    ),
    (
        "files as a string",
        edited(lambda d: d["distributions"][0].update(files="900")),
        "failed validation: distributions.0.files: Input should be a valid integer",
    ),
    (
        "negative files",
        edited(lambda d: d["distributions"][0].update(files=-1)),
        "distributions.0.files: Input should be greater than or equal to 0",
    ),
    (
        "record digest not hex",
        edited(lambda d: d["distributions"][0].update(record_sha256="Z" * 64)),
        "distributions.0.record_sha256: String should match pattern",
    ),
    (
        "10 kB distribution name",
        edited(lambda d: d["distributions"][0].update(name="n" * 10_000)),
        "distributions.0.name: String should have at most 256 characters",
    ),
    (
        "extra unknown key",
        edited(lambda d: d.update(backdoor=True)),
        "failed validation: backdoor: Extra inputs are not permitted",
    ),
    (
        "10 kB env name",
        edited(lambda d: d["env"].update({"K" * 10_000: "v"})),
        "failed validation: env.KKKK",
    ),
    (
        "extra key in a distribution",
        edited(lambda d: d["distributions"][1].update(trusted=True)),
        "distributions.1.trusted: Extra inputs are not permitted",
    ),
    (
        "many errors",
        edited(lambda d: d.update(python=1, os=2, env=3, torch=4)),
        "(and 1 more)",
    ),
    (
        "too many distributions",
        edited(lambda d: d.update(distributions=[dist(f"d{i}") for i in range(20_001)])),
        "distributions: List should have at most 20000 items",
    ),
    (
        "duplicate distribution",
        edited(lambda d: d["distributions"].append(dict(d["distributions"][0], version="9"))),
        "lists the distribution 'numpy' more than once",
    ),
    (
        "duplicate key",
        encode(document())[:-1] + b', "env": {"LD_PRELOAD": "/evil.so"}}',
        "probe printed invalid JSON: the key 'env' appears twice",
    ),
]


@pytest.mark.parametrize(("output", "fragment"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_output_is_refused(output: bytes, fragment: str) -> None:
    with pytest.raises(ProbeError) as caught:
        parse_probe_output(output, "container web-1")
    message = str(caught.value)
    assert message.startswith("container web-1: ")
    assert fragment in message
    assert len(message) < 2000  # untrusted text is quoted short
    assert caught.value.exit_code == 3


def test_the_cap_is_16_mib() -> None:
    assert MAX_PROBE_OUTPUT == 16 * 1024 * 1024
