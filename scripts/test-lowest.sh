#!/usr/bin/env bash
# The tests that load models, train, resume, serve and stop workers, against the LOWEST versions
# pyproject.toml allows: `uv pip compile --resolution lowest-direct` picks each direct
# requirement's floor (its own needs at their newest), scripts/check_floors.py fails when a floor
# cannot be installed (raise it), and the tests run in a virtual environment of their own.
#
#   scripts/test-lowest.sh [pytest args]      (make test-lowest)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${LOWEST_VENV:-.venv-lowest}
EXTRAS="worker,s3,server,dev,trackers"
started=$(date +%s)

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip 'uv>=0.9' 'packaging>=24'
lock="$VENV/lowest.txt"
"$VENV/bin/uv" pip compile -q pyproject.toml $(printf -- '--extra %s ' ${EXTRAS//,/ }) \
  --resolution lowest-direct --python "$VENV/bin/python" \
  -c constraints/cpu-torch.txt -c constraints/lowest-notes.txt -o "$lock"
echo "lowest-direct versions of ftkit's direct requirements:"
"$VENV/bin/python" scripts/check_floors.py "$lock" $(printf -- '--extra %s ' ${EXTRAS//,/ }) \
  --exempt "torch=CI runs the CPU build on disk (constraints/cpu-torch.txt); the floor is the GPU check's"
"$VENV/bin/python" -m pip install -q -c "$lock" -e ".[$EXTRAS]"
echo "installed in $(($(date +%s) - started)) s"

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
tests=(tests/test_train.py tests/test_end_to_end.py tests/test_resume.py tests/test_reliability.py
       tests/test_kernels.py tests/test_report.py tests/test_demo.py tests/test_gpu_path.py
       tests/test_training_runs_once.py tests/test_server.py tests/test_s3.py tests/test_stack.py
       tests/test_preference_data.py tests/test_preference_training.py tests/test_multi_device.py
       tests/test_trackers.py)
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "${tests[@]}" "$@"
echo "test-lowest: $(($(date +%s) - started)) s in all"
