#!/usr/bin/env bash
# Creates .venv/ at the repository root and installs resnetlab into it (editable), with the test extras.
# Idempotent: a second run only re-checks the install. Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi

# torch and torchvision must come as a matching pair: a torchvision beside a mismatched torch fails to import.
case "$(uname -m)" in
    aarch64|arm64) torch_pair="torch==2.9.1 torchvision==0.24.1" ;;
    *)             torch_pair="torch==2.14.1 torchvision==0.29.1" ;;
esac
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
    .venv/bin/pip install --quiet --disable-pip-version-check $torch_pair
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/python -c "import torch, torchvision, resnetlab; print(f'resnetlab {resnetlab.__version__}: torch {torch.__version__}, torchvision {torchvision.__version__}')"
