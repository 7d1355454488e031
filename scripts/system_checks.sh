#!/usr/bin/env bash
# The long checks, run by .ci/run after `make test`: the real-process system tests (tests/system), the
# suites that train real models for minutes (tests/conftest.py LONG_CHECKS), and the cluster checks
# (tests/cluster: SeaweedFS as the S3 store, Envoy in front of replicas).
set -euo pipefail
cd "$(dirname "$0")/.."
make install node-deps
paths=$(.venv/bin/python -c 'import tests.conftest as c; print(" ".join("tests/" + p for p in c.LONG_CHECKS))')
# shellcheck disable=SC2086
LSTM_LONG_CHECKS=1 LSTM_CLUSTER_TESTS=1 .venv/bin/python -m pytest $paths tests/cluster "$@"
