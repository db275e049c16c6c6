#!/usr/bin/env bash
# The wheels scripts/device/workload_gpu.sh installs on the device machine, which reaches no
# package index: every dependency of lockd, resolved for CPython 3.12 on manylinux x86-64, into
# .wheels-device/ (ignored by git; `run` carries it). Run here, from anywhere, with the network.
#
# lockd's own wheel is built only to resolve its dependencies and is not kept: on the device
# lockd runs from the checkout the `run` tool sends (PYTHONPATH), so what runs there is the
# code as it is at that moment, never a wheel older than the tree.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
dest=$repo/.wheels-device
python=${PYTHON:-$repo/.venv/bin/python}
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT

rm -rf "$dest"
mkdir -p "$dest"
"$python" -m pip wheel -q --no-deps --no-build-isolation -w "$build" "$repo"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
"$python" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dest" "$build"/lockd-*.whl
rm -f "$dest"/lockd-*.whl
ls "$dest"
du -sh "$dest"
