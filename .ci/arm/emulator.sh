#!/usr/bin/env bash
# Shared by the aarch64 scripts: QEMU user-mode emulation and a cached arm64 Debian root file system.
# Source it; needs root (binfmt_misc, mmdebstrap, chroot). Nothing here is specific to sodd.

ARM_CACHE=${SODD_ARM_CACHE:-/var/cache/sodd-ci/arm64}
ARM_SUITE=bookworm
# What the board image needs for `make run` / `make test`: Python 3.11 with venv, make, CA certificates.
ARM_PACKAGES=python3,python3-venv,python3-dev,ca-certificates,make,libgomp1
# Bump when the root file system's recipe changes, so a cached one is rebuilt.
ARM_ROOTFS_RECIPE=1
# QEMU's default `max` CPU has SME, which no board in our range has; OpenVINO's ARM kernels gave
# wrong boxes on it. Cortex-A76 is the core of Raspberry Pi 5 and RK3588.
export QEMU_CPU=${QEMU_CPU:-cortex-a76}

log() { printf '[arm64 %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

ensure_tools() {
    local missing=()
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    command -v arch-test >/dev/null || missing+=(arch-test)  # mmdebstrap needs it for a foreign arch
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
        update-binfmts --enable qemu-aarch64 >/dev/null
    fi
}

# The cached root file system's path for this recipe; built (about 3 minutes) when missing.
ensure_rootfs() {
    local key sources=()
    key=$(printf '%s\n' "$ARM_SUITE" "$ARM_PACKAGES" "$ARM_ROOTFS_RECIPE" | sha256sum | cut -c1-12)
    ARM_ROOTFS=$ARM_CACHE/rootfs-$ARM_SUITE-$key
    if [[ -x $ARM_ROOTFS/usr/bin/python3 ]]; then
        log "root file system from the cache: $ARM_ROOTFS"
        return
    fi
    mkdir -p "$ARM_CACHE"
    # The host's configured Debian mirror (deb822 or one-line), so a mirror-only network works.
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
        [[ -s $f ]] && grep -q '^[^#]*deb\|^URIs:' "$f" && sources+=("$f")
    done
    local staging=$ARM_CACHE/.rootfs-staging-$$
    rm -rf "$staging"
    log "building an arm64 $ARM_SUITE root file system (mmdebstrap)"
    mmdebstrap --quiet --arch=arm64 --variant=minbase --include="$ARM_PACKAGES" \
        "$ARM_SUITE" "$staging" "${sources[@]}"
    # Built for a chroot: name resolution and certificates come from the host at run time.
    rm -rf "$ARM_ROOTFS"
    mv "$staging" "$ARM_ROOTFS"
    log "root file system ready: $ARM_ROOTFS ($(du -sh "$ARM_ROOTFS" | cut -f1))"
}

# A throwaway copy of the cached root file system for one run, with /proc, /dev and /sys, the
# host's name resolution and CA certificates (pip behind a TLS-inspecting proxy needs the host's
# extra ones), and the pip wheel cache shared between runs. Sets ARM_ROOT; undo with release_run_root.
prepare_run_root() {
    ARM_RUN_DIR=$(mktemp -d /var/tmp/sodd-arm64-root.XXXXXX)
    ARM_ROOT=$ARM_RUN_DIR/root
    mkdir -p "$ARM_ROOT" "$ARM_RUN_DIR/upper" "$ARM_RUN_DIR/work"
    # An overlay leaves the cached root untouched at no cost; a copy where overlays are not allowed.
    if ! mount -t overlay overlay -o "lowerdir=$ARM_ROOTFS,upperdir=$ARM_RUN_DIR/upper,workdir=$ARM_RUN_DIR/work" \
            "$ARM_ROOT" 2>/dev/null; then
        cp -a "$ARM_ROOTFS/." "$ARM_ROOT/"
    fi
    # Wheels downloaded by earlier runs (pip's HTTP cache stays empty behind this network's proxy),
    # and sodd's own cache of converted programs, keyed by content, so it is safe to share.
    mkdir -p "$ARM_CACHE/wheels" "$ARM_CACHE/sodd" "$ARM_ROOT/wheelhouse" "$ARM_ROOT/root/.cache/sodd"
    mount --bind "$ARM_CACHE/wheels" "$ARM_ROOT/wheelhouse"
    mount --bind "$ARM_CACHE/sodd" "$ARM_ROOT/root/.cache/sodd"
    mount -t proc proc "$ARM_ROOT/proc"
    mount --rbind /dev "$ARM_ROOT/dev"
    mount --rbind /sys "$ARM_ROOT/sys"
    cp -L /etc/resolv.conf "$ARM_ROOT/etc/resolv.conf"
    cp -L /etc/ssl/certs/ca-certificates.crt "$ARM_ROOT/etc/ssl/certs/host-ca-certificates.crt"
}

release_run_root() {
    [[ -n ${ARM_RUN_DIR:-} && -d $ARM_RUN_DIR ]] || return 0
    local m
    # Deepest mounts first.
    for m in $(awk -v r="$ARM_RUN_DIR/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$ARM_RUN_DIR"
    ARM_ROOT= ARM_RUN_DIR=
}

# The emulated side's environment: nothing of the host's but what pip needs.
arm_env() {
    ARM_ENV=(/usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8
        QEMU_CPU="$QEMU_CPU" PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 PIP_FIND_LINKS=/wheelhouse)
}

# Run a shell command inside the arm64 root, emulated, with a clean environment.
in_arm() {
    arm_env
    chroot "$ARM_ROOT" "${ARM_ENV[@]}" /bin/bash -c "$1"
}

# The same in the background, its output to $2; sets ARM_BG_PID to the emulated process's id (the
# command should `exec` its last step, so that signals sent to that id reach it).
in_arm_bg() {
    arm_env
    chroot "$ARM_ROOT" "${ARM_ENV[@]}" /bin/bash -c "$1" >"$2" 2>&1 &
    ARM_BG_PID=$!
}
