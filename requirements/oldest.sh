#!/usr/bin/env bash
# `make test-oldest`: install the lower bounds that pyproject.toml declares and run the fast tests on them.
#
# uv resolves "lowest-direct": the lowest release of each of our direct dependencies (every extra included)
# that the others' own requirements allow; their dependencies resolve as usual. The Python is OLDEST_PY
# (default python3, 3.11 on our machines: the lowest that requires-python admits, since flwr needs 3.11).
# torch's lowest release comes from PyPI as a CUDA build (about 3 GB on first use; it runs on the CPU). What
# was installed is kept in .venv-oldest/oldest.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${OLDEST_PY:-python3}"
VENV=.venv-oldest
UV_PIN=uv==0.13.9

rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "$UV_PIN"
"$VENV/bin/uv" pip compile pyproject.toml --all-extras --resolution lowest-direct \
    --python "$VENV/bin/python" --quiet --output-file "$VENV/oldest.txt"
"$VENV/bin/uv" pip install --python "$VENV/bin/python" --quiet -r "$VENV/oldest.txt"
"$VENV/bin/uv" pip install --python "$VENV/bin/python" --quiet --no-deps -e .
"$VENV/bin/python" --version
grep -E '^(torch|transformers|peft|flwr|datasets|numpy|bitsandbytes)==' "$VENV/oldest.txt" | tr '\n' ' '
echo
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider "$@"
