#!/usr/bin/env bash
# The long system checks (tests/cluster: SeaweedFS, Envoy in front of replicas): run by .ci/run after make test.
set -euo pipefail
cd "$(dirname "$0")/.."
make install
LSTM_CLUSTER_TESTS=1 .venv/bin/python -m pytest tests/cluster "$@"
