#!/usr/bin/env bash
# The aarch64 check (CI runs it after `make test`; needs root):
#   1. a Debian bookworm arm64 root file system under QEMU user-mode emulation (cached), a copy of
#      this checkout in it, and `make setup` there: pip installs sodd from PyPI, wheels only;
#   2. `make run` there serves the embedded default model; an x86 client gets boxes; SIGTERM drains;
#   3. one emulated daemon serves the default model and the shared PicoDet-XS on cpu, onnxruntime
#      and openvino; two x86 daemons serve the same, one as usual and one with OPENCV_IPP=disabled
#      (OpenCV's own resize code, as on ARM); .ci/arm/compare_boxes.py asks them all and requires
#      scores within 1e-3 and corners within 0.1 px: generated scenes and photo windows against
#      the usual x86 daemon, whole photos against the IPP-free one (reported against both).
# Without ../shared/data (or $SODD_SHARED_DATA) the PicoDet part is skipped, saying so.
# Caches live in $SODD_ARM_CACHE (default /var/cache/sodd-ci/arm64): root file system, wheels,
# converted ONNX graphs. Figures go to $SODD_ARM_CACHE/last-run.json.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
source .ci/arm/emulator.sh

HOST_PY=${SODD_HOST_PYTHON:-$REPO/.venv/bin/python}
[[ -x $HOST_PY ]] || { echo ".ci/arm/check.sh: $HOST_PY is missing; run make setup first" >&2; exit 1; }
START_TIMEOUT=${SODD_ARM_START_TIMEOUT:-1200}
declare -A TIMES=()
X86_PID= X86_PLAIN_PID=
PASSED=0 FAILED=0

# Count a named check's outcome: `verdict NAME COMMAND...`.
verdict() {
    local name=$1
    shift
    if "$@"; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); log "FAILED: $name"; fi
}

cleanup() {
    local pid
    for pid in ${ARM_BG_PID:-} ${X86_PID:-} ${X86_PLAIN_PID:-}; do
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    done
    release_run_root
}
trap cleanup EXIT
trap "exit 143" TERM INT  # so that the EXIT trap unmounts and removes the run root

# Wait until a daemon's log says it listens; print its address. Fails when the process dies first.
wait_listening() {
    local pid=$1 logfile=$2 deadline=$((SECONDS + START_TIMEOUT)) line
    while ((SECONDS < deadline)); do
        line=$(grep -m1 '^sodd: listening on ' "$logfile" || true)
        if [[ -n $line ]]; then
            echo "${line#sodd: listening on }" | cut -d' ' -f1
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "daemon $pid exited before listening:"; tail -30 "$logfile" >&2; return 1
        fi
        sleep 2
    done
    log "daemon $pid not listening after ${START_TIMEOUT} s:"; tail -30 "$logfile" >&2
    return 1
}

# SIGTERM a daemon and require a clean drain: the drain line, no Paddle FatalError.
stop_and_check() {
    local pid=$1 logfile=$2 what=$3 deadline
    kill -TERM "$pid"
    deadline=$((SECONDS + 120))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$what: still running 120 s after SIGTERM"; return 1
    fi
    if ! grep -q 'SIGTERM: .*refusing new' "$logfile" || grep -q 'FatalError' "$logfile"; then
        log "$what: no clean drain after SIGTERM:"; tail -20 "$logfile" >&2; return 1
    fi
    log "$what: drained and stopped on SIGTERM"
}

# The emulated process that `make run` started: make's child running `sodd serve`.
serve_child_of() {
    local parent=$1 child
    for child in $(ps -o pid= --ppid "$parent"); do
        if tr '\0' ' ' <"/proc/$child/cmdline" | grep -q 'sodd serve'; then echo "$child"; return 0; fi
        serve_child_of "$child" && return 0
    done
    return 1
}

shared_data() {
    local d
    for d in "${SODD_SHARED_DATA:-}" "$REPO/../shared/data" /work/shared/data; do
        [[ -n $d && -d $d/models/PicoDet-XS-416-coco ]] && { (cd "$d" && pwd); return 0; }
    done
    return 1
}

ensure_tools
SECONDS=0
ensure_rootfs
TIMES[rootfs_s]=$SECONDS
prepare_run_root
log "emulated CPU: $QEMU_CPU; root: $ARM_ROOT"

# A clean copy of the checkout: tracked and untracked-but-not-ignored files, as a clone would have.
mkdir -p "$ARM_ROOT/src/sodd"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$ARM_ROOT/src/sodd"
in_arm 'echo "$(uname -m), $(python3 -V), $(ldd --version | head -1)"'

SECONDS=0
log "make setup (pip install from PyPI, wheels only) under emulation"
in_arm 'cd /src/sodd && make setup' >"$ARM_ROOT/setup.log" 2>&1 || { tail -40 "$ARM_ROOT/setup.log"; exit 1; }
TIMES[install_s]=$SECONDS
log "installed in ${SECONDS} s"
# Keep the wheels for the next run; files already there are not fetched again.
in_arm 'cd /src/sodd && .venv/bin/pip freeze --exclude-editable >/tmp/frozen.txt &&
        .venv/bin/pip download -q --no-deps --only-binary :all: -d /wheelhouse -r /tmp/frozen.txt' \
    || log "could not refresh the wheel cache (the next run downloads again)"

# 2. `make run` serves the embedded default model.
SECONDS=0
in_arm_bg 'cd /src/sodd && exec make run ARGS="--listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0"' \
    "$ARM_ROOT/make-run.log"
MAKE_PID=$ARM_BG_PID
address=$(wait_listening "$MAKE_PID" "$ARM_ROOT/make-run.log")
TIMES[make_run_listening_s]=$SECONDS
log "make run: listening on $address after ${SECONDS} s"
verdict "make run answers an x86 client" "$HOST_PY" - "$address" <<'EOF'
import sys
sys.path.insert(0, ".ci/arm")
from compare_boxes import synth_images
from sodd_client import Client

with Client(sys.argv[1], timeout=600) as client:
    response = client.detect(synth_images(1)[0], threshold=0.3)
    assert response.boxes, "the default model found nothing on a generated scene"
    print(f"make run on aarch64: {len(response.boxes)} boxes from {response.model} on {response.device}")
EOF
SERVE_PID=$(serve_child_of "$MAKE_PID")
verdict "make run drains on SIGTERM" stop_and_check "$SERVE_PID" "$ARM_ROOT/make-run.log" "make run (aarch64)"
wait "$MAKE_PID" 2>/dev/null || true  # make reports its recipe's signal exit; that is expected

# The tests about ARM behaviour, run on aarch64 (those needing Paddle Lite's x86 wheel skip).
SECONDS=0
verdict "tests on aarch64" in_arm 'cd /src/sodd && .venv/bin/pytest -q -p no:cacheprovider \
    tests/test_arm_parity.py tests/test_arm_plugins.py'
TIMES[arm_tests_s]=$SECONDS

# 3. Every backend against x86's.
default_dir=sodd/default_model
models=(default)
model_args=()
if data=$(shared_data); then
    mkdir -p "$ARM_ROOT/data"
    cp -r "$data/models/PicoDet-XS-416-coco" "$ARM_ROOT/data/picodet"
    models+=(picodet)
    visdrone=$data/visdrone/0000315_01601_d_0000509.jpg
    photos=$visdrone,$data/sahi/small-vehicles1.jpeg,$data/sahi/terrain2.png
else
    log "SKIPPED: the shared PicoDet-XS model (../shared/data) is absent; comparing the default model only"
fi
# Against the usual x86 daemon: generated scenes at the model's size and at 640x480 (resized), and
# 416-pixel windows of the VisDrone photo at its own scale. Whole photos, which the resize shrinks
# 2.6 to 4.6 times, against the IPP-free x86 daemon: x86 OpenCV's IPP resize differs from OpenCV's
# own code, the only code ARM has, past the tolerance on such photos (docs/arm.md).
compare_args=()
n_models=0
for backend in cpu onnxruntime openvino; do
    for m in "${models[@]}"; do
        name=$m-$backend
        n_models=$((n_models + 1))
        model_args+=(--device "$name=$backend")
        if [[ $m == default ]]; then
            compare_args+=(--model "$name=synth" --model "$name=synth:640x480")
            if [[ -n ${photos:-} ]]; then compare_args+=(--photos "$name=$photos"); fi
        else
            compare_args+=(--model "$name=crops:416:$visdrone" --photos "$name=$photos")
        fi
    done
done
arm_models=() x86_models=()
for backend in cpu onnxruntime openvino; do
    arm_models+=(--model "default-$backend=/src/sodd/$default_dir")
    x86_models+=(--model "default-$backend=$REPO/$default_dir")
    if [[ " ${models[*]} " == *" picodet "* ]]; then
        arm_models+=(--model "picodet-$backend=/data/picodet")
        x86_models+=(--model "picodet-$backend=$data/models/PicoDet-XS-416-coco")
    fi
done

SECONDS=0
# One predictor per model: under emulation every extra instance costs a load and a warm-up.
in_arm_bg "cd /src/sodd && exec .venv/bin/sodd serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --instances 1 ${arm_models[*]} ${model_args[*]}" "$ARM_ROOT/backends.log"
ARM_PID=$ARM_BG_PID
x86_log=$(mktemp /tmp/sodd-x86-reference.XXXXXX.log)
"$REPO/.venv/bin/sodd" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --instances 1 "${x86_models[@]}" \
    "${model_args[@]}" >"$x86_log" 2>&1 &
X86_PID=$!
x86_plain_log=$(mktemp /tmp/sodd-x86-plain.XXXXXX.log)
OPENCV_IPP=disabled "$REPO/.venv/bin/sodd" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --instances 1 \
    "${x86_models[@]}" "${model_args[@]}" >"$x86_plain_log" 2>&1 &
X86_PLAIN_PID=$!
x86_address=$(wait_listening "$X86_PID" "$x86_log")
x86_plain_address=$(wait_listening "$X86_PLAIN_PID" "$x86_plain_log")
arm_address=$(wait_listening "$ARM_PID" "$ARM_ROOT/backends.log")
TIMES[backends_listening_s]=$SECONDS
log "aarch64 daemon with $n_models models listening on $arm_address after ${SECONDS} s"
grep -E 'ready on|cannot load' "$ARM_ROOT/backends.log" >&2 || true

SECONDS=0
report=$ARM_CACHE/last-run.json
verdict "boxes within tolerance of x86's" "$HOST_PY" .ci/arm/compare_boxes.py --arm "$arm_address" \
    --x86 "$x86_address" --x86-plain "$x86_plain_address" "${compare_args[@]}" --json "$report.boxes"
TIMES[compare_s]=$SECONDS
verdict "the backends daemon drains on SIGTERM" stop_and_check "$ARM_PID" "$ARM_ROOT/backends.log" "aarch64 daemon"
kill -TERM "$X86_PID" "$X86_PLAIN_PID"; wait "$X86_PID" "$X86_PLAIN_PID" || true
rm -f "$x86_log" "$x86_plain_log"

"$HOST_PY" - "$report" <<EOF
import json, os, sys
times = {$(for k in "${!TIMES[@]}"; do printf '"%s": %s, ' "$k" "${TIMES[$k]}"; done)}
boxes = json.load(open(sys.argv[1] + ".boxes")) if os.path.exists(sys.argv[1] + ".boxes") else {}
json.dump({"qemu_cpu": "$QEMU_CPU", "times": times, "boxes": boxes}, open(sys.argv[1], "w"), indent=2)
print("aarch64 check times (s):", ", ".join(f"{k} {v}" for k, v in sorted(times.items())))
EOF
rm -f "$report.boxes"
echo "aarch64: $PASSED passed, $FAILED failed"
((FAILED == 0))
