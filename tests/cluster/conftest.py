"""Cluster checks: several real processes per test (SeaweedFS, Envoy, replicas), minutes per file.

They are not part of ``make test`` (kept near ten minutes on two cores); ``.ci/run`` runs them through
``scripts/cluster_checks.sh``, which sets LSTM_CLUSTER_TESTS=1 (tests/conftest.py skips collecting this
folder otherwise, so nothing here is ever counted as a pass without running).
"""
