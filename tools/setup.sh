#!/usr/bin/env bash
# Idempotent set-up on Debian 12: QGIS and GDAL from Debian, a virtual environment on the
# Debian Python (it alone sees QGIS's bindings) with pinned wheels, the plugin staged
# where qgis_process finds it, and an isolated QGIS profile with the plugin enabled.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# xvfb and xauth: a virtual display for tests/test_desktop.py (the real QGIS desktop under xvfb-run).
DEBS="qgis python3-qgis qgis-providers gdal-bin python3-gdal python3-venv python3-scipy zip xvfb xauth"

missing=$(for p in $DEBS; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages: $missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

if nvidia-smi -L >/dev/null 2>&1; then ORT=requirements-gpu.txt; else ORT=requirements-cpu.txt; fi
STAMP=.venv/.installed-$(cat requirements.txt requirements-batch.txt "$ORT" constraints.txt pyproject.toml | sha1sum | cut -c1-12)
if [ ! -f "$STAMP" ]; then
  [ -x .venv/bin/python ] || /usr/bin/python3 -m venv --system-site-packages .venv
  # onnxruntime and onnxruntime-gpu install the same module: never both.
  other=$([ "$ORT" = requirements-gpu.txt ] && echo onnxruntime || echo onnxruntime-gpu)
  .venv/bin/pip uninstall -q -y "$other" >/dev/null 2>&1 || true
  echo "setup: installing pinned Python packages ($ORT)"
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -r requirements.txt -r requirements-batch.txt -r "$ORT" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  # the package itself, editable: the batch's console script `despecknet-batch` (pyproject.toml)
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
    || .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  .venv/bin/python -c "import numpy, torch, onnxruntime, onnx; from osgeo import gdal_array; import qgis.core; import dask, distributed" \
    || { echo "setup: the Python environment is broken"; exit 1; }
  rm -f .venv/.installed-*
  touch "$STAMP"
fi

# qgis_process loads plugins from QGIS_PLUGINPATH: stage the plugin folder there.
mkdir -p build/plugins
ln -sfn "$ROOT/despecknet_qgis" build/plugins/despecknet_qgis
PROFILE_INI=build/profile/profiles/default/QGIS/QGIS3.ini
if ! grep -q "^despecknet_qgis=true" "$PROFILE_INI" 2>/dev/null; then
  mkdir -p "$(dirname "$PROFILE_INI")"
  printf '[PythonPlugins]\ndespecknet_qgis=true\n' >> "$PROFILE_INI"
fi
echo "setup: ok"
