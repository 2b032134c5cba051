#!/usr/bin/env bash
# Create the virtual environment of `make install` and install the pinned stack and this
# package into it (editable, with the test extras).
#
#     bash envs/install-venv.sh PYTHON VENV
#
# With uv when it installs (measured on the 2-core reference machine, empty caches: 55 s
# against 96 s with pip), else with pip. uv does not read pip's configuration, so the indexes,
# find-links and constraints pip is configured with (pip.conf, PIP_* variables) are handed to
# it, and --index-strategy unsafe-best-match makes it take the best version across indexes, as
# pip does. One difference stays: for a version on several indexes uv takes the first index's
# wheels, pip the most specific one (here: another build of the same OpenCV). Bytecode is
# compiled at install (uv in parallel), as pip does: otherwise the demo's first jobs compile
# torch's modules, two at a time, on every fresh venv (measured in a fresh clone: `make demo`
# took 441 s without, 350 s with).
# GHANET_PIP=1 forces pip.
set -euo pipefail
python=${1:?usage: install-venv.sh PYTHON VENV}
venv=${2:?usage: install-venv.sh PYTHON VENV}
"$python" -m venv "$venv"
bin="$venv/bin"

pip_install() {
    "$bin/python" -m pip install --quiet -r requirements-pins.txt
    "$bin/python" -m pip install --quiet -e '.[test]'
}

if [ "${GHANET_PIP:-0}" = 1 ]; then
    pip_install
    exit 0
fi

declare -A seen=()
uv_args=()
add() {  # add OPTION VALUE once
    if [ -z "${seen["$1 $2"]:-}" ]; then
        seen["$1 $2"]=1
        uv_args+=("$1" "$2")
    fi
}
while IFS= read -r line; do
    key=${line%%=*}
    value=${line#*=}
    value=${value#\'}
    value=${value%\'}
    case "$key" in
        *.find-links) for v in $value; do add --find-links "$v"; done ;;
        *.extra-index-url) for v in $value; do add --extra-index-url "$v"; done ;;
        *.index-url) add --index-url "$value" ;;
        *.constraint) for v in $value; do add --constraint "$v"; done ;;
    esac
done < <("$bin/python" -m pip config list 2>/dev/null || true)

if "$bin/python" -m pip install --quiet uv >/dev/null 2>&1 &&
    "$bin/uv" pip install --quiet --python "$bin/python" --index-strategy unsafe-best-match --compile-bytecode \
        "${uv_args[@]}" -r requirements-pins.txt -e '.[test]'; then
    exit 0
fi
echo "install-venv: uv is not available or failed; installing with pip" >&2
pip_install
