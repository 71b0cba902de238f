#!/usr/bin/env bash
# `make test` on aarch64 under QEMU user-mode emulation: the whole suite, PaddleX parity included
# (PaddleX runs emulated too, so "identical to PaddleX" is checked within the architecture).
# Over an hour under emulation, so not part of CI; run it by hand (as root):
#   .ci/arm/full-tests.sh [RESULTS_DIR [TIME_LIMIT [PYTEST ARGS...]]]
# Defaults: /var/tmp/sodd-arm-tests, 3h, the whole suite. RESULTS_DIR gets the log and junit.xml.
# PaddleX's environment uses opencv-contrib-python, whose GUI build needs libGL and GLib: they are
# installed into this run's root file system (sodd itself uses the headless OpenCV and needs neither).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
source .ci/arm/emulator.sh

RESULTS=${1:-/var/tmp/sodd-arm-tests}
LIMIT=${2:-3h}
PYTEST_ARGS="${*:3}"

trap release_run_root EXIT
trap "exit 143" TERM INT
ensure_tools
ensure_rootfs
prepare_run_root
mkdir -p "$RESULTS" "$ARM_ROOT/src/sodd" "$ARM_ROOT/src/shared" "$ARM_ROOT/results"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$ARM_ROOT/src/sodd"
# The shared test material beside the checkout, as on the build machine, read-only.
if [[ -d $REPO/../shared/data ]]; then
    mount --bind "$REPO/../shared" "$ARM_ROOT/src/shared"
    mount -o remount,bind,ro "$ARM_ROOT/src/shared"
fi
mount --bind "$RESULTS" "$ARM_ROOT/results"
in_arm 'apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends libgl1 libglib2.0-0 >/dev/null'
log "make test under emulation ($QEMU_CPU), at most $LIMIT; results in $RESULTS"
SECONDS=0
status=0
in_arm "cd /src/sodd && timeout --signal=INT --kill-after=60 $LIMIT make test \
    ARGS='-p no:cacheprovider --durations=40 --junitxml=/results/junit.xml $PYTEST_ARGS'" \
    >"$RESULTS/make-test.log" 2>&1 || status=$?
log "make test ended with status $status after ${SECONDS} s"
tail -5 "$RESULTS/make-test.log" >&2
exit "$status"
