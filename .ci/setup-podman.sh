#!/usr/bin/env bash
# Prepare a private, daemonless podman setup for the image tests (tests/test_image.py).
#
# Idempotent and fast when already done (~1 s). Needs root; no stdin; works with CI=true.
# Every step checks what it needs on every run, so a podman store kept from an earlier run
# (or another machine's state) cannot hide a missing install step:
#   1. installs podman, buildah, runc, debootstrap, ca-certificates and debian-archive-keyring
#      through apt when one is not fully installed (dpkg's status, not only a binary on PATH),
#      then checks that each program runs;
#   2. writes containers.conf (two flavours) and storage.conf into a private folder;
#   3. builds a stand-in for the production base image (docker.io/library/python:3.11-slim)
#      with debootstrap, because no container registry is reachable here, when that image is
#      not in the private storage or was built from another recipe (a label holds the
#      recipe's hash), and checks that the image has what the Dockerfile uses;
#   4. writes $DIR/env.sh, which the tests (and you) source to use this setup:
#        . /var/tmp/wabucketref-podman/env.sh && podman images
#
# Settings (environment):
#   WABUCKETREF_PODMAN_DIR   private folder (default /var/tmp/wabucketref-podman; kept across
#                            runs on one machine so the base image and layer cache survive)
#   WABUCKETREF_BASE_IMAGE   base image name to provide (default docker.io/library/python:3.11-slim)
#   WABUCKETREF_REBUILD_BASE=1  rebuild the stand-in base even if it exists
set -euo pipefail

DIR=${WABUCKETREF_PODMAN_DIR:-/var/tmp/wabucketref-podman}
BASE_IMAGE=${WABUCKETREF_BASE_IMAGE:-docker.io/library/python:3.11-slim}
SUITE=${WABUCKETREF_BASE_SUITE:-bookworm}
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

log() { printf '[setup-podman] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "must run as root (podman here runs rootful with a private storage)"
    exit 1
fi

# --- 1. packages -----------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
PACKAGES=(podman buildah runc debootstrap ca-certificates debian-archive-keyring)
installed() { [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]; }
missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
for prog in podman buildah runc debootstrap; do
    command -v "$prog" >/dev/null 2>&1 || missing+=("$prog")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${PACKAGES[*]} (apt; missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -q </dev/null >/dev/null
    apt-get -o DPkg::Lock::Timeout=300 install -y -q "${PACKAGES[@]}" </dev/null >/dev/null
    hash -r
fi
for prog in podman buildah runc; do
    "$prog" --version >/dev/null 2>&1 || { log "$prog is installed but does not run: $prog --version"; exit 1; }
done
command -v debootstrap >/dev/null || { log "debootstrap missing after apt"; exit 1; }
[ -s "$CA_BUNDLE" ] || { log "no CA bundle at $CA_BUNDLE (ca-certificates)"; exit 1; }

# --- 2. configuration ------------------------------------------------------------------
mkdir -p "$DIR/storage" "$DIR/tmp"
# runroot and tmp_dir hold podman's locks and "alive" marker; they must not survive a
# reboot, and /run is not a tmpfs on every machine: wipe them when the boot id changed.
# (Their paths must stay fixed: podman's database remembers the first ones it saw.)
# One runroot per private folder (two storages must never share one).
DIR_ID=$(printf '%s' "$DIR" | md5sum | cut -c1-8)
if [ -d /run ] && [ -w /run ]; then
    RUNROOT=/run/wabucketref-podman-$DIR_ID
else
    RUNROOT="$DIR/run"
fi
BOOT_ID=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)
if [ -f "$DIR/boot_id" ] && [ "$(cat "$DIR/boot_id")" != "$BOOT_ID" ]; then
    log "new boot: clearing $RUNROOT"
    rm -rf "$RUNROOT"
fi
echo "$BOOT_ID" >"$DIR/boot_id"
mkdir -p "$RUNROOT"

# overlay is much faster than vfs; fall back to vfs where the kernel cannot do overlay.
DRIVER=${WABUCKETREF_STORAGE_DRIVER:-}
if [ -z "$DRIVER" ]; then
    if [ -f "$DIR/driver" ]; then
        DRIVER=$(cat "$DIR/driver")
    elif grep -qw overlay /proc/filesystems 2>/dev/null; then
        DRIVER=overlay
    else
        DRIVER=vfs
    fi
fi

write_if_changed() {  # write stdin to $1 only when the content differs (keeps mtimes stable)
    local tmp
    tmp=$(mktemp "$1.XXXXXX")
    cat >"$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}

write_storage_conf() {
    write_if_changed "$DIR/storage.conf" <<EOF
[storage]
driver = "$1"
graphroot = "$DIR/storage"
runroot = "$RUNROOT/storage"
EOF
}
write_storage_conf "$DRIVER"

containers_conf() {  # $1 = "with-ca" or "plain"
    cat <<EOF
# Written by .ci/setup-podman.sh. Without the ulimits runc fails to set rlimits here;
# crun rejects this VM's hybrid cgroup layout, hence runc + cgroupfs.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
EOF
    if [ "$1" = with-ca ] && [ -f "$CA_BUNDLE" ]; then
        # The host CA bundle lets RUN steps (pip) and containers reach package registries
        # through this machine's TLS setup. It is bind-mounted at run time only, never
        # committed into an image.
        echo "volumes = [\"$CA_BUNDLE:$CA_BUNDLE:ro\"]"
    fi
    cat <<EOF

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$RUNROOT/libpod"
EOF
}
containers_conf with-ca | write_if_changed "$DIR/containers.conf"
# Used only to build the stand-in base: apt rewrites the CA bundle, which fails under the mount.
containers_conf plain | write_if_changed "$DIR/containers-base.conf"

write_if_changed "$DIR/env.sh" <<EOF
# Source me to use the private podman setup of wabucketref's image tests.
export WABUCKETREF_PODMAN_DIR="$DIR"
export CONTAINERS_CONF="$DIR/containers.conf"
export CONTAINERS_STORAGE_CONF="$DIR/storage.conf"
export WABUCKETREF_BASE_IMAGE="$BASE_IMAGE"
export WABUCKETREF_PODMAN_SOCKET="$RUNROOT/podman.sock"
EOF

export CONTAINERS_STORAGE_CONF="$DIR/storage.conf"

# Probe the storage driver once (first run only); fall back to vfs if overlay fails.
if [ ! -f "$DIR/driver" ]; then
    if ! CONTAINERS_CONF="$DIR/containers-base.conf" podman images >/dev/null 2>"$DIR/tmp/probe.err"; then
        if [ "$DRIVER" = overlay ]; then
            log "overlay storage failed ($(tail -1 "$DIR/tmp/probe.err")); using vfs"
            DRIVER=vfs
            rm -rf "${DIR:?}/storage" "$RUNROOT/storage"
            mkdir -p "$DIR/storage"
            write_storage_conf vfs
            CONTAINERS_CONF="$DIR/containers-base.conf" podman images >/dev/null
        else
            cat "$DIR/tmp/probe.err" >&2
            exit 1
        fi
    fi
    echo "$DRIVER" >"$DIR/driver"
fi

# --- 3. stand-in base image ------------------------------------------------------------
export CONTAINERS_CONF="$DIR/containers-base.conf"
TMP_TAG=localhost/wabucketref-debootstrap:$SUITE

# Debian's python3 (3.11 on bookworm), pip and venv, laid out like the official image:
# python/pip on PATH under /usr/local/bin, no EXTERNALLY-MANAGED marker, no apt lists.
# The recipe's hash is stored as a label: an image from another recipe is rebuilt.
base_recipe() {
    cat <<EOF
FROM $TMP_TAG
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update -q \\
 && apt-get install -y -q --no-install-recommends python3 python3-pip python3-venv ca-certificates \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \\
 && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \\
 && ln -sf /usr/bin/python3 /usr/local/bin/python \\
 && ln -sf /usr/bin/python3 /usr/local/bin/python3 \\
 && ln -sf /usr/bin/pip3 /usr/local/bin/pip \\
 && ln -sf /usr/bin/pip3 /usr/local/bin/pip3
LABEL org.opencontainers.image.description="Stand-in for $BASE_IMAGE built by wabucketref's .ci/setup-podman.sh"
CMD ["python3"]
EOF
}
RECIPE_ID=$( (base_recipe; echo "suite=$SUITE") | sha256sum | cut -c1-16)

base_is_usable() {  # the image exists, is from this recipe, and has what the Dockerfile uses
    local label descr
    podman image exists "$BASE_IMAGE" || return 1
    label=$(podman image inspect --format '{{ index .Labels "wabucketref.base-recipe" }}' "$BASE_IMAGE" 2>/dev/null) || return 1
    descr=$(podman image inspect --format '{{ index .Labels "org.opencontainers.image.description" }}' "$BASE_IMAGE" 2>/dev/null) || return 1
    # (a real base image put there by hand, not a stand-in of ours, is kept if it works)
    if [ "$label" != "$RECIPE_ID" ] && { [ -n "$label" ] || [[ "$descr" == "Stand-in for "* ]]; }; then
        log "$BASE_IMAGE is from another recipe (${label:-no label}, want $RECIPE_ID): rebuilding"
        return 1
    fi
    podman run --rm --network=none --pull=never "$BASE_IMAGE" \
        python -c 'import venv, ensurepip, tomllib, ssl' </dev/null >/dev/null 2>&1 || {
        log "$BASE_IMAGE lacks python3/venv/ssl: rebuilding"
        return 1
    }
}

if [ "${WABUCKETREF_REBUILD_BASE:-0}" != 1 ] && base_is_usable; then
    log "ready: $BASE_IMAGE present ($DRIVER storage in $DIR, recipe $RECIPE_ID)"
    exit 0
fi

log "building stand-in $BASE_IMAGE with debootstrap ($SUITE, ~1 min)"
ROOTFS="$DIR/tmp/rootfs"
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS"
MIRROR=${WABUCKETREF_DEBIAN_MIRROR:-}
if [ -z "$MIRROR" ] && grep -qs '^ID=debian' /etc/os-release; then
    # On Debian, use the mirror the host's apt already uses (deb822 or one-line sources).
    MIRROR=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
        | grep -v security | head -1 || true)
    [ -n "$MIRROR" ] || MIRROR=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        | awk '{print $2}' | grep -v security | head -1 || true)
fi
# Elsewhere (Ubuntu's mirrors hold no Debian suites) Debian's own, checked with Debian's keyring.
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
debootstrap --variant=minbase --keyring="$KEYRING" "$SUITE" "$ROOTFS" "$MIRROR" </dev/null >"$DIR/tmp/debootstrap.log" 2>&1 || {
    tail -20 "$DIR/tmp/debootstrap.log" >&2
    exit 1
}
tar -C "$ROOTFS" -c . | podman import -q - "$TMP_TAG" >/dev/null
rm -rf "$ROOTFS"

CTX="$DIR/tmp/base-ctx"
rm -rf "$CTX"
mkdir -p "$CTX"
base_recipe >"$CTX/Containerfile"
podman build -q --network=host --pull=never --label "wabucketref.base-recipe=$RECIPE_ID" -t "$BASE_IMAGE" "$CTX" </dev/null >"$DIR/tmp/base-build.log" 2>&1 || {
    tail -20 "$DIR/tmp/base-build.log" >&2
    exit 1
}
podman rmi -f "$TMP_TAG" >/dev/null 2>&1 || true
rm -rf "$CTX"
base_is_usable || { log "the freshly built $BASE_IMAGE fails its own check"; exit 1; }
log "ready: built $BASE_IMAGE ($DRIVER storage in $DIR, recipe $RECIPE_ID)"
