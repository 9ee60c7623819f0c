#!/usr/bin/env bash
# The test suite on the lowest versions pyproject.toml admits for each direct dependency (uv's
# lowest-direct resolution: each direct dependency at the lowest version that resolves, the
# others at the newest that fit), on Python 3.10, the lowest requires-python admits. Needs the
# package index (the lowest torch's wheels and their CUDA libraries, about 3 GB) and python3.10
# (PYTHON overrides it); builds the environment in VENV (default /tmp/svd-callback-lowest).
# setuptools is held below 81 (the dev extra's floor is 77), which no longer ships
# pkg_resources: TensorBoard before 2.21 imports it to start its server. Run from anywhere; extra arguments go to pytest. The tested
# versions are listed in the README ("Requirements").
set -euo pipefail
PYTHON="${PYTHON:-python3.10}"
VENV="${VENV:-/tmp/svd-callback-lowest}"
cd "$(dirname "$0")/.."
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet uv
echo "setuptools<81" > "$VENV/constraints.txt"
"$VENV/bin/uv" pip compile --quiet --python "$VENV/bin/python" --resolution lowest-direct \
    --extra dev --constraint "$VENV/constraints.txt" pyproject.toml -o "$VENV/lowest.txt"
"$VENV/bin/uv" pip sync --python "$VENV/bin/python" "$VENV/lowest.txt"
"$VENV/bin/uv" pip install --python "$VENV/bin/python" --no-deps -e .  # the scripts' imports
grep -E '^(python|torch|torchvision|lightning|numpy|scipy|pandas|tensorboard|matplotlib|hypernetx|tensorly|scikit-learn|jsonargparse|typing-extensions)==' \
    "$VENV/lowest.txt"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
