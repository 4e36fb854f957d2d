#!/usr/bin/env bash
# The prepared GPU run (README: "Running on a GPU"). Installs the nbval wheels carried in .whl/
# (shared/gpu/README.md) when they are there, then hands over to tools/gpu_run.py, which runs
# every phase in the time budget and writes $OUT/report.json plus the exported weights.
# Arguments go to gpu_run.py (e.g. --dry-run, --budget 530, --no-alpha-run, --compile).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
else
    echo "gpu_run.sh: no wheels in .whl/: the notebook phases will be skipped" >&2
fi
exec python3 tools/gpu_run.py "$@"
