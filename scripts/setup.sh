#!/usr/bin/env bash
# Creates .venv/ at the repository root and installs resnetlab into it (editable), with the test, onnx and
# tensorboard extras (onnx, onnxscript, onnxruntime: so that the tests also check the ONNX export; tensorboard:
# the TensorBoard mirror of a run).
# Idempotent: a second run only re-checks the install.
#
# Usage: scripts/setup.sh [--fashion-mnist]
#   --fashion-mnist  also make sure Fashion-MNIST is on disk for the quick start: where the four files are
#                    not in $RESNETLAB_DATA or /usr/share/datasets/fashion-mnist, install Debian's
#                    dataset-fashion-mnist package (root or sudo, apt-get). Elsewhere resnetlab downloads it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fashion-mnist" ]; then
    have() { [ -f "$1/train-images-idx3-ubyte.gz" ] || [ -f "$1/fashion-mnist/train-images-idx3-ubyte.gz" ]; }
    if have /usr/share/datasets/fashion-mnist || { [ -n "${RESNETLAB_DATA:-}" ] && have "$RESNETLAB_DATA"; }; then
        echo "Fashion-MNIST: found"
    elif command -v apt-get >/dev/null 2>&1; then
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "Fashion-MNIST: installing Debian's dataset-fashion-mnist (30 MB) into /usr/share/datasets/fashion-mnist"
        $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null || { $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
            || echo "Fashion-MNIST: apt-get failed; resnetlab will try torchvision's download instead"
    else
        echo "Fashion-MNIST: not found and no apt-get; resnetlab will try torchvision's download"
    fi
fi

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
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test,onnx,tensorboard]'
.venv/bin/python -c "import torch, torchvision, resnetlab; print(f'resnetlab {resnetlab.__version__}: torch {torch.__version__}, torchvision {torchvision.__version__}')"
