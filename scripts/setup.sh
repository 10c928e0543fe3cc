#!/usr/bin/env bash
# Sets up autoresearch in ./.venv on a fresh machine: bubblewrap (the sandbox; installed as root
# with apt-get or dnf, else the command to run is printed), torch (CPU build where that is what pip
# finds; CUDA wheels work too), the package with the embedded-LLM extra, the test tools, and the
# default local GGUF model where this machine cannot reach the Hugging Face hub.
#   bash scripts/setup.sh            # everything (the llama.cpp extra builds in ~9 minutes, once)
#   AUTORESEARCH_NO_LLM=1 bash scripts/setup.sh   # skip the embedded LLM (proposals files, remote LLMs)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_bubblewrap.sh
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: unpinned, pip would pull a multi-GB CUDA build on machines that have a CPU wheel.
.venv/bin/pip install -q "torch==2.13.0"
if [ -n "${AUTORESEARCH_NO_LLM:-}" ]; then
  .venv/bin/pip install -q -e ".[test,hub,ray]"
else
  .venv/bin/pip install -q -e ".[test,llm,hub,ray]"
  # On machines without the Hugging Face hub, this environment ships a fetcher that puts the
  # default model in autoresearch's cache; elsewhere the first `autoresearch run --idea` downloads it.
  fetch=../shared/tools/fetch-local-llm.sh
  if [ -f "$fetch" ]; then
    bash "$fetch" >/dev/null
  fi
fi
echo "autoresearch is set up in .venv ($(.venv/bin/autoresearch --version))"
