#!/usr/bin/env bash
# Podman, Docker Compose v2 and the stand-in images that `make compose-test` runs the compose files
# with, on a machine with no Docker engine and no Docker Hub (ours: Debian 12, root, hybrid cgroups).
#
#   podman.sh setup            podman from Debian's packages when missing, this machine's containers.conf,
#                              and Docker Compose v2 built from its Go module (once, cached)
#   podman.sh start | stop     podman's Docker-compatible API service, which docker-compose talks to
#   podman.sh env              the variables the other tools need (DOCKER_HOST, CONTAINERS_CONF, COMPOSE)
#   podman.sh python-standin   the base image, made with debootstrap (where python:3.11-slim cannot be pulled)
#   podman.sh kafka-standin    a Kafka image from deploy/kafka's Maven Central jars (where apache/kafka cannot)
#   podman.sh clean            remove those images (~8.5 GB here) and podman's dangling build layers
#
# The base stand-in is Debian 12 (python:3.11-slim-bookworm's Debian) with its own Python 3.11, plus
# this machine's extra CA certificates, which pip needs to reach PyPI from here.
# Podman is the one on the machine's PATH (here: Debian 12's podman 4.3.1 with buildah 1.28, installed
# by `setup`). Its settings live in .compose/containers.conf (CONTAINERS_CONF): runc where cgroups are
# hybrid (crun refuses them), and ulimits this machine grants. Every image this builds is labelled kafka-rerank.standin=... .
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
state="$root/.compose"
cache="${RERANK_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kafka-rerank}"
COMPOSE_VERSION=v2.40.3
compose_bin="$cache/compose/docker-compose-$COMPOSE_VERSION"
socket="$state/podman.sock"
#: the stand-ins' names: localhost/..., never the names of the images they stand in for
PYTHON_STANDIN=localhost/kafka-rerank-standin/python:3.11-bookworm
KAFKA_STANDIN=localhost/kafka-rerank-standin/kafka:4.1.2
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
export CONTAINERS_CONF="$state/containers.conf"

say() { echo "podman.sh: $*" >&2; }

conf() {  # .compose/containers.conf for this machine
    mkdir -p "$state"
    local runtime="" nofile nproc
    # crun (podman's default) refuses hybrid cgroups (v1 controllers beside a v2 mount); runc runs there.
    if [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then runtime=runc; fi
    # Within the hard limits (podman's defaults, nofile 1048576 and more processes, are above ours),
    # and at most 32768 processes: above that, runc's setrlimit was refused here (EPERM) even under
    # a hard limit of 96367.
    nofile="$(ulimit -Hn)"; nproc="$(ulimit -Hu)"
    if [ "$nofile" = unlimited ] || [ "$nofile" -gt 1048576 ]; then nofile=1048576; fi
    if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
    {
        echo "# written by deploy/compose/podman.sh for this machine"
        echo "[containers]"
        echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
        echo "[engine]"
        if [ -n "$runtime" ]; then echo "runtime = \"$runtime\""; fi
    } > "$CONTAINERS_CONF"
}

apt_install() {  # Debian's packages, as root
    say "installing $* from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" > /dev/null
}

install_podman() {
    if ! command -v podman >/dev/null; then
        apt_install podman runc crun conmon netavark aardvark-dns catatonit iptables debootstrap
    fi
    # runc where crun cannot run (hybrid cgroups: see conf)
    if [ ! -f /sys/fs/cgroup/cgroup.controllers ] && ! command -v runc >/dev/null; then apt_install runc; fi
}

build_compose() {  # Docker Compose v2 from its Go module: `go install` refuses its go.mod (exclude directives)
    if [ -x "$compose_bin" ]; then return; fi
    command -v go >/dev/null || { say "Go is needed to build Docker Compose $COMPOSE_VERSION"; exit 1; }
    say "building Docker Compose $COMPOSE_VERSION from the Go module proxy (once; a few minutes)"
    local dir work
    dir="$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
    work="$(mktemp -d)"
    cp -r "$dir/." "$work" && chmod -R u+w "$work"
    mkdir -p "$(dirname "$compose_bin")"
    (cd "$work" && CGO_ENABLED=0 go build -trimpath -o "$compose_bin.tmp" \
        -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" ./cmd)
    mv "$compose_bin.tmp" "$compose_bin"
    rm -rf "$work"
}

service_alive() { [ -f "$state/service.pid" ] && kill -0 "$(cat "$state/service.pid")" 2>/dev/null; }

start() {
    if service_alive; then return; fi
    rm -f "$socket"
    # setsid: the service outlives this script; `podman.sh stop` ends it by its pid
    setsid podman system service --time=0 "unix://$socket" > "$state/service.log" 2>&1 < /dev/null &
    echo $! > "$state/service.pid"
    for _ in $(seq 1 100); do [ -S "$socket" ] && return; sleep 0.1; done
    say "podman's API service did not start: $(tail -n 5 "$state/service.log")"; exit 1
}

stop() {
    if service_alive; then
        local pid; pid="$(cat "$state/service.pid")"
        kill -TERM "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$state/service.pid" "$socket"
}

python_standin() {  # Debian 12 (python:3.11-slim-bookworm's Debian) with its Python 3.11 in a venv on PATH
    if podman image exists "$PYTHON_STANDIN"; then return; fi
    command -v debootstrap >/dev/null || apt_install debootstrap
    say "making the base image stand-in $PYTHON_STANDIN with debootstrap (once; about a minute)"
    local tree; tree="$(mktemp -d /var/tmp/kafka-rerank-rootfs.XXXXXX)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$tree" "$DEBIAN_MIRROR" \
        > "$state/debootstrap.log" 2>&1 || { tail -n 20 "$state/debootstrap.log" >&2; exit 1; }
    # `python` and `pip` on PATH, and pip free to install, as in python:3.11-slim
    chroot "$tree" python3 -m venv /opt/python
    # This machine's own CA certificates too (where a TLS-inspecting proxy stands between it and PyPI,
    # the builds' pip must trust what the host's pip trusts); pip reads the system bundle (PIP_CERT).
    if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$tree/usr/local/share/ca-certificates/"
        chroot "$tree" update-ca-certificates > /dev/null
    fi
    # Slimmer, as the slim images are: no package lists, docs or man pages (their folders stay: dpkg's
    # scripts write links there).
    rm -rf "$tree"/var/lib/apt/lists/* "$tree"/var/cache/apt/*.bin
    find "$tree/usr/share/doc" "$tree/usr/share/man" -type f -delete
    tar -C "$tree" -c . | podman import --quiet \
        --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' --change 'CMD ["python"]' \
        --change 'LABEL kafka-rerank.standin="python:3.11-slim-bookworm: Debian 12 by debootstrap, its Python 3.11"' \
        - "$PYTHON_STANDIN" > /dev/null
    rm -rf "$tree"
}

kafka_standin() {  # Apache Kafka 4.1.2 from the Maven Central jars, laid out and configured as apache/kafka is
    if podman image exists "$KAFKA_STANDIN"; then return; fi
    python_standin
    bash "$root/deploy/kafka/kafka.sh" jars
    say "building the Kafka image stand-in $KAFKA_STANDIN from deploy/kafka's jars (once)"
    local context; context="$(mktemp -d)"
    cp -r "$here/kafka-standin/." "$context"
    cp -r "$root/deploy/kafka/target/libs" "$context/libs"
    rm -f "$context/libs/.stamp"
    podman build -q --build-arg "BASE_IMAGE=$PYTHON_STANDIN" -t "$KAFKA_STANDIN" "$context" > /dev/null
    rm -rf "$context"
}

clean() {  # the images make compose-test built, the stand-ins and podman's dangling layers
    local images
    images="$(podman images --format '{{.Repository}}:{{.Tag}}' | grep -E \
        '^(localhost/)?kafka-rerank(-prepare)?:(cpu|loadgen)$|^localhost/kafka-rerank-standin/' || true)"
    # shellcheck disable=SC2086
    if [ -n "$images" ]; then podman rmi $images > /dev/null; fi
    podman image prune -f > /dev/null
}

case "${1:-}" in
    setup) install_podman; conf; build_compose ;;
    clean) conf; clean ;;
    start) conf; start ;;
    stop) stop ;;
    env) printf 'DOCKER_HOST=unix://%s\nCONTAINERS_CONF=%s\nCOMPOSE=%s\nPYTHON_STANDIN=%s\nKAFKA_STANDIN=%s\n' \
             "$socket" "$CONTAINERS_CONF" "$compose_bin" "$PYTHON_STANDIN" "$KAFKA_STANDIN" ;;
    python-standin) python_standin ;;
    kafka-standin) kafka_standin ;;
    *) echo "usage: $0 setup|start|stop|env|python-standin|kafka-standin|clean" >&2; exit 2 ;;
esac
