#!/usr/bin/env bash
# Optional dependency of sinkscope-bench section 2 (the eager-PyTorch
# comparison): Debian's python3-torch, which uses the same libtorch 1.13 as
# the engine. Idempotent; run as root (or with sudo available). The rest of
# the bench needs only what scripts/setup-debian.sh installs.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
if ! dpkg-query -W -f='${Status}' python3-torch 2>/dev/null | grep -q "install ok installed"; then
  echo "setup-bench: installing python3-torch"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-torch
fi
/usr/bin/python3 -c 'import torch; print("setup-bench: torch", torch.__version__)'
