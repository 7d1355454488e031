#!/usr/bin/env bash
# Real smoke test of the compose stack, run by .ci/run after `make test`.
#
#  1. a Docker engine: use the running one, or install docker.io + docker-compose from Debian and start
#     dockerd (overlay2, no bridge, no iptables: every container uses host networking);
#  2. a base image: python:3.11-slim when it can be pulled, otherwise a debootstrapped Debian bookworm
#     imported as lstm-stack-base:bookworm (cached: built once per machine);
#  3. a wheelhouse (.wheelhouse/, git-ignored) downloaded on the host, and the image built offline from it;
#  4. docker-compose.yml rewritten to host networking (network_mode: host, no published ports, addresses
#     127.0.0.1, free ports 58051/58052 by default) and brought up; bounded wait for both healthchecks;
#  5. the demo client (compose profile `demo`) runs the seed walkthrough against the stack;
#  6. the stack is taken down WITHOUT -v and brought up again: the demo's scalers and models must still
#     be listed, and give the same predictions as before the restart;
#  7. teardown on every exit path (trap): down -v, the test image removed, a dockerd we started stopped.
#
# If no engine can be started the script fails loudly; ALLOW_SKIP_DOCKER=1 turns that into a loud skip.
# Knobs (environment): SMOKE_SCALER_PORT, SMOKE_MODEL_PORT, BASE_IMAGE, SMOKE_BASE_CACHE_IMAGE,
# DEBOOTSTRAP_MIRROR, WHEELHOUSE_DIR, SMOKE_KEEP_IMAGE=1, SMOKE_KEEP_DOCKERD=1, SMOKE_DEMO_ARGS (extra
# demo flags, e.g. "--epochs 50"),
# and the *_TIMEOUT variables below.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO_ROOT=$(pwd)

PROJECT=lstmsmoke                    # plain letters: compose v1 and v2 derive the same volume names
IMAGE=lstm-stack:smoke
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
STACK_STARTED=0
IMAGE_BUILT=0
SKIPPED=0
COMPOSE=()
COMPOSE_FILE=$SMOKE_DIR/docker-compose.host.yml

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
        compose --profile demo down -v --remove-orphans --timeout 30 >"$SMOKE_DIR/down.log" 2>&1 \
            || show_tail "$SMOKE_DIR/down.log" 20
        log "teardown: stack and its volumes removed"
    fi
    if [[ $IMAGE_BUILT == 1 && "${SMOKE_KEEP_IMAGE:-0}" != "1" ]]; then
        # The build cache and the base image stay, so a rerun on this machine is quick.
        docker image rm "$IMAGE" >/dev/null 2>&1 && log "teardown: removed image $IMAGE"
    fi
    if [[ -n "$STARTED_DOCKERD_PID" && "${SMOKE_KEEP_DOCKERD:-0}" != "1" ]]; then
        log "teardown: stopping the dockerd this script started (pid $STARTED_DOCKERD_PID)"
        kill -TERM "$STARTED_DOCKERD_PID" 2>/dev/null
        for _ in $(seq 1 30); do
            kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break
            sleep 1
        done
        kill -KILL "$STARTED_DOCKERD_PID" 2>/dev/null
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
        log "dockerd is up (pid $STARTED_DOCKERD_PID)"
    fi
fi
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
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"] + ["wheel"]))
EOF
# Wheels for the image, not the host: CPython 3.11, x86_64, glibc manylinux (bookworm has glibc 2.36).
platforms=(--platform manylinux2014_x86_64)
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
mkdir -p "$WHEELHOUSE_DIR"
log "pip download into $WHEELHOUSE_DIR (cached wheels are reused)"
if ! timeout "$PIP_DOWNLOAD_TIMEOUT" "$PIP_PY" -m pip download --disable-pip-version-check --progress-bar off \
    --dest "$WHEELHOUSE_DIR" --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
    "${platforms[@]}" -r "$SMOKE_DIR/requirements.txt" >"$SMOKE_DIR/pip-download.log" 2>&1; then
    show_tail "$SMOKE_DIR/pip-download.log" 30
    fail "pip download of the wheelhouse failed"
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
export LSTM_SCALER_PORT=$SCALER_PORT LSTM_MODEL_PORT=$MODEL_PORT LSTM_STACK_IMAGE=$IMAGE
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
compose --profile demo config >"$SMOKE_DIR/compose-resolved.yml" || fail "the rewritten compose file is invalid"
if grep -qE '^\s+ports:|scaler:[0-9]|model:[0-9]|0\.0\.0\.0' "$SMOKE_DIR/compose-resolved.yml"; then
    fail "the rewritten compose file still publishes ports or names non-loopback addresses"
fi
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

# cleanup (the EXIT trap) does down -v, removes the image and stops a dockerd we started.
