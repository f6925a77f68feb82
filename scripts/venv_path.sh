# Sourced by setup.sh and env.sh: where this checkout's virtual environment lives.
# One venv per checkout (keyed by its path): the editable install of dlgpr_core points at
# one source tree, so two clones sharing a venv would silently test each other's code.
# Outside the tree on purpose: rosidl's CMake export refuses include paths (numpy's, from
# the venv) that lie inside the package's source directory.
_dlgpr_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
DLGPR_VENV="${DLGPR_VENV:-$HOME/.cache/dlgpr/venv-$(printf '%s' "$_dlgpr_root" | sha256sum | cut -c1-10)}"
unset _dlgpr_root
