# Source me (bash/zsh): activates this checkout's venv and the colcon-built messages.
#   source scripts/env.sh
_dlgpr_here="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
# shellcheck disable=SC1091
source "$_dlgpr_here/scripts/venv_path.sh"
# shellcheck disable=SC1091
source "$DLGPR_VENV/bin/activate"
export AMENT_PREFIX_PATH="$DLGPR_VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$DLGPR_VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
if [ -f "$_dlgpr_here/install/local_setup.sh" ]; then
  # colcon's script reads unset variables: let it, even when the caller runs `set -u`.
  case $- in *u*) _dlgpr_nounset=1; set +u ;; *) _dlgpr_nounset= ;; esac
  # shellcheck disable=SC1091
  COLCON_CURRENT_PREFIX="$_dlgpr_here/install" . "$_dlgpr_here/install/local_setup.sh"
  [ -n "$_dlgpr_nounset" ] && set -u
  unset _dlgpr_nounset
fi
unset _dlgpr_here
