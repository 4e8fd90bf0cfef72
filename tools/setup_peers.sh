#!/usr/bin/env bash
# Idempotent set-up of the peers that `make bench-quality` compares the plugin with.
# They are benchmark-only dependencies and never enter the plugin's .venv nor requirements.txt:
#   - OTB's otbcli_Despeckle (Lee, Frost, Gamma-MAP, Kuan) from Debian's otb-bin;
#   - a separate virtual environment build/peers-venv with PyPI's bm3d (homomorphic BM3D)
#     and deepdespeckling (SAR2SAR), on torch 2.13 CPU, numpy kept below 2.
# A peer that cannot be installed is reported and skipped: this script never fails because of it,
# and tools/bench_quality.py prints that peer as unavailable with the reason.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=build/peers-venv
LOG=build/bench-quality/setup_peers.log
mkdir -p build/bench-quality
: > "$LOG"

# OTB (Debian). About 70 packages; installed once.
if ! command -v otbcli_Despeckle >/dev/null 2>&1; then
  echo "setup-peers: installing Debian's otb-bin (OTB Despeckle)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq otb-bin; } >>"$LOG" 2>&1 \
    || echo "setup-peers: otb-bin did not install (see $LOG); OTB filters will be reported unavailable"
fi

# Python peers: one pinned set, installed once (stamp = hash of the pins).
PINS="torch==2.13.0 bm3d==4.0.3 deepdespeckling==0.8"
STAMP=$VENV/.installed-$(echo "$PINS" | sha1sum | cut -c1-12)
if [ ! -f "$STAMP" ]; then
  [ -x $VENV/bin/python ] || /usr/bin/python3 -m venv --system-site-packages $VENV >>"$LOG" 2>&1
  echo "setup-peers: installing $PINS into $VENV (numpy<2 kept by constraints.txt)"
  ok=1
  for pkg in $PINS; do
    $VENV/bin/pip install -q --disable-pip-version-check -c constraints.txt "$pkg" >>"$LOG" 2>&1 \
      || { echo "setup-peers: $pkg did not install (see $LOG)"; ok=0; }
  done
  if [ $ok = 1 ]; then
    rm -f $VENV/.installed-*
    touch "$STAMP"
  fi
fi
echo "setup-peers: done"
