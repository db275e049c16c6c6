#!/usr/bin/env bash
# #17's GPU evidence: a PyTorch job on the GPU recorded and verified as `process:PID`, then the
# same job started with LD_LIBRARY_PATH pointing at a copy of cuDNN (the same bytes at another
# path) and verified against that record: `workload` must fail, naming the library and both
# paths. For the device machine (one GPU, no Docker, no network); run once with the `run` tool:
#
#   bash scripts/device/wheels.sh        # here first: lockd's dependencies as cp312 wheels
#   run(command="bash scripts/device/workload_gpu.sh", carry=[".wheels-device"], timeout_s=600)
#
# lockd runs from the checkout `run` sends (PYTHONPATH), its dependencies from the wheels
# (installed with `pip --target`: the device's python3 is itself a venv, /opt/torch/.venv, so a
# --system-site-packages venv made from it would not see torch, and lockd needs none of torch).
# The job runs with the torch venv's python3 by its path, as a Slurm job would.
#
# What it writes lands in $OUT (6 files): summary.txt (what ran and what came back), log.txt
# (everything printed), jobs.txt (the two jobs' output and the CUDA libraries each mapped, from
# /proc/PID/maps), manifest.dsse.json (the signed record), verify-clean.json and verify-copy.json
# (the two reports).
#
# Knobs, for its test run on a machine without a GPU (docs/gpu.md):
#   WL_DEVICE=cpu          the job runs on the CPU (default: cuda)
#   WL_GPU=                record without --gpu (default: --gpu)
#   WL_COPY='libgomp*'     the job's libraries to copy, as file name patterns (default: libcudnn*)
#   WL_JOB_PYTHON=PATH     the job's interpreter (default: python3 on PATH: the torch venv's)
#   WL_LOCKD_PYTHON=PATH   lockd's interpreter (default: the job's)
#   WL_WHEELS=DIR          the wheels lockd needs, installed for it ('' installs none; default:
#                          .wheels-device/)
set -u -o pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-/tmp/lockd-workload-out}
work=/tmp/lockd-workload
job_python=${WL_JOB_PYTHON:-$(command -v python3)}
lockd_python=${WL_LOCKD_PYTHON:-$job_python}
wheels=${WL_WHEELS-$repo/.wheels-device}
device=${WL_DEVICE:-cuda}
gpu=${WL_GPU---gpu}
copy=${WL_COPY:-libcudnn*}
pids=()

lockd() {
    local path=$repo
    [ -d "$work/site" ] && path=$repo:$work/site
    env PYTHONPATH="$path" LOCKD_PASSWORD=device-run LOCKD_GPU_TIMEOUT="${LOCKD_GPU_TIMEOUT:-300}" \
        "$lockd_python" -m lockd "$@"
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
note() { printf '%s\n' "$*" | tee -a "$work/notes.txt"; }

started=0
start_job() {  # NAME [VAR=VALUE...]: the job, from $work, in this environment and those variables
    local name=$1
    shift
    rm -f "$work/$name.pg"  # a killed job's NCCL rendezvous file
    (cd "$work" && exec env -u PYTHONPATH "$@" "$job_python" "$repo/scripts/device/workload_job.py" \
        --device "$device" --rendezvous "$work/$name.pg") >"$work/$name.out" 2>"$work/$name.err" &
    started=$!
    pids+=("$started")
}

wait_ready() {  # NAME PID: until the job printed its line (it exits or 300 s pass: fails)
    local deadline=$((SECONDS + 300))
    while [ $SECONDS -lt $deadline ]; do
        grep -q '"ready": true' "$work/$1.out" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 1
    done
    note "$1 (pid $2) did not get ready:"
    tail -n 30 "$work/$1.err"
    return 1
}

cuda_maps() {  # PID: the CUDA and NVIDIA libraries it maps, one path a line
    awk '$6 ~ /lib(cudnn|cublas|nccl|cudart|nvrtc|nvJitLink|cufft|curand|cusparse|cusolver|cuda|nvidia)/ { print $6 }' \
        "/proc/$1/maps" 2>/dev/null | sort -u
}

matching() {  # PID: the files it maps whose name matches $copy
    local path
    awk '$6 ~ /^\// { print $6 }' "/proc/$1/maps" 2>/dev/null | sort -u | while read -r path; do
        # shellcheck disable=SC2254 (the pattern is meant to match)
        case "${path##*/}" in $copy) printf '%s\n' "$path" ;; esac
    done
}

cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    wait 2>/dev/null
}

main() {
    trap cleanup EXIT
    echo "== machine: $(uname -srm); job: $job_python; lockd: $lockd_python; device: $device"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    if [ -n "$wheels" ]; then
        echo "== lockd's dependencies from $wheels"
        "$lockd_python" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir \
            --target "$work/site" "$wheels"/*.whl || { note "installing the wheels failed"; return 1; }
    fi
    lockd keygen --output-key-prefix "$work/key" || { note "lockd keygen failed"; return 1; }

    echo "== job 1: the recorded one"
    start_job job1
    local job1=$started
    wait_ready job1 "$job1" || return 1
    note "job 1: pid $job1: $(head -n 1 "$work/job1.out")"
    if [ -d "/proc/$job1/map_files" ]; then
        note "/proc/PID/map_files: present on this kernel ($(ls "/proc/$job1/map_files" | wc -l) entries for job 1)"
    else
        note "/proc/PID/map_files: ABSENT on this kernel ($(uname -r)): the workload is not examined"
    fi
    {
        echo "== job 1 (pid $job1): $(head -n 1 "$work/job1.out")"
        echo "-- CUDA and NVIDIA libraries it maps (/proc/$job1/maps):"
        cuda_maps "$job1"
    } >>"$work/jobs.txt"

    echo "== lockd record process:$job1 $gpu"
    local t
    t=$(now)
    lockd record "process:$job1" --key "$work/key.key" --output "$work/job.dsse.json" $gpu
    note "record: exit $? in $(since "$t") s"
    cp "$work/job.dsse.json" "$out/manifest.dsse.json" 2>/dev/null

    echo "== lockd verify process:$job1 --json"
    t=$(now)
    lockd verify "process:$job1" --manifest "$work/job.dsse.json" --key "$work/key.pub" --json \
        >"$out/verify-clean.json"
    note "verify job 1: exit $? in $(since "$t") s (expected 0)"

    echo "== a copy of $copy (the same bytes at another path)"
    local mapped
    mapped=$(matching "$job1")
    if [ -z "$mapped" ]; then
        note "job 1 maps no file named $copy: nothing to copy"
        return 1
    fi
    local dir file
    for dir in $(printf '%s\n' "$mapped" | xargs -n 1 dirname | sort -u); do
        # shared objects only (a system cuDNN's directory may hold its static archives too)
        # shellcheck disable=SC2086 (the pattern is meant to expand)
        for file in $dir/$copy; do
            case "$file" in *.so | *.so.*) cp -L "$file" "$work/lib/" ;; esac
        done
        note "copied $dir/$copy (shared objects) to $work/lib/"
    done
    ls -l "$work/lib"

    echo "== job 2: LD_LIBRARY_PATH=$work/lib"
    start_job job2 "LD_LIBRARY_PATH=$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    local job2=$started how="LD_LIBRARY_PATH=$work/lib"
    wait_ready job2 "$job2" || return 1
    if ! grep -qF "$work/lib/" "/proc/$job2/maps"; then
        note "job 2 (pid $job2) maps nothing from $work/lib: the loader found the libraries first" \
            "(RPATH, or loaded by their full path); starting it again with LD_PRELOAD of the copies"
        kill "$job2"
        local preload
        preload=$(printf '%s\n' "$mapped" | while read -r path; do printf '%s:' "$work/lib/${path##*/}"; done)
        start_job job2 "LD_PRELOAD=${preload%:}"
        job2=$started how="LD_PRELOAD=${preload%:}"
        wait_ready job2 "$job2" || return 1
    fi
    note "job 2: pid $job2 ($how): $(head -n 1 "$work/job2.out")"
    note "job 2 maps from the copy: $(grep -F "$work/lib/" "/proc/$job2/maps" | awk '{print $6}' | sort -u | tr '\n' ' ')"
    {
        echo
        echo "== job 2 (pid $job2, $how): $(head -n 1 "$work/job2.out")"
        echo "-- CUDA and NVIDIA libraries it maps (/proc/$job2/maps):"
        cuda_maps "$job2"
    } >>"$work/jobs.txt"

    echo "== lockd verify process:$job2 --json, against job 1's manifest"
    t=$(now)
    lockd verify "process:$job2" --manifest "$work/job.dsse.json" --key "$work/key.pub" --json \
        >"$out/verify-copy.json"
    note "verify job 2: exit $? in $(since "$t") s (expected 1: workload fails)"
}

rm -rf "$work"
mkdir -p "$out" "$work/lib"
main 2>&1 | tee "$out/log.txt"
cp "$work/jobs.txt" "$out/jobs.txt" 2>/dev/null
{
    cat "$work/notes.txt" 2>/dev/null
    echo
    env -u PYTHONPATH "$lockd_python" "$repo/scripts/device/workload_summary.py" "$out" "$work/lib"
} >"$out/summary.txt" 2>&1
cat "$out/summary.txt"
