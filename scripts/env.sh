# Source me (bash/zsh): activates the venv and the colcon-built messages.
#   source scripts/env.sh
_dlgpr_here="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
_dlgpr_venv="${DLGPR_VENV:-$HOME/.cache/dlgpr/venv}"
# shellcheck disable=SC1091
source "$_dlgpr_venv/bin/activate"
export AMENT_PREFIX_PATH="$_dlgpr_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$_dlgpr_venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
if [ -f "$_dlgpr_here/install/local_setup.sh" ]; then
  # local_setup.sh reads COLCON_CURRENT_PREFIX-relative paths and unset variables
  # shellcheck disable=SC1091
  COLCON_CURRENT_PREFIX="$_dlgpr_here/install" . "$_dlgpr_here/install/local_setup.sh"
fi
unset _dlgpr_here _dlgpr_venv
