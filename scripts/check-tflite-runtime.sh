#!/usr/bin/env bash
# Run the TFLite backend tests on tflite-runtime 2.14 (the fallback backend) in a venv of
# its own: it needs numpy < 2, while EdgeFleet's .venv has numpy 2 and ai-edge-litert.
# Python 3.11 at most (tflite-runtime has no wheel past it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV=.venv-tflite-runtime
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "numpy<2" tflite-runtime==2.14.0 tflite==2.18.0 \
  flatbuffers pytest pytest-timeout
PYTHONPATH=. "$VENV/bin/python" -m pytest -q -p no:cacheprovider -rs tests/unit/test_tflite_runner.py
