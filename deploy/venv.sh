#!/usr/bin/env bash
# Makes .venv hold exactly the dependencies pinned in pyproject.toml: the worker's and every
# optional group but gpu (the tools' and the tests'; deploy/requirements.py dev).
#
# The venv itself lives in a cache folder keyed by that dependency list and the Python
# version, and .venv is a link to it: PyPI's torch for Linux is a ~3 GB CUDA build, and a
# fresh clone (CI's, a second checkout) should reuse it rather than reinstall it. The
# project itself is never installed into the shared venv (tests and tools run from the
# repository root with PYTHONPATH), so sharing it across clones is safe.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found %s)" % sys.version.split()[0])'
deps=$("$PY" deploy/requirements.py dev)
key=$( { echo "$deps"; "$PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
cache="${RERANK_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kafka-rerank}"
store="$cache/venv-$key"
holds_these_pins() {  # true when $1 is a finished venv of this very key (pins and Python)
    [ -f "$1/.complete" ] && [ -x "$1/bin/python" ] \
        && [ "$(cat "$1/requirements.txt" 2>/dev/null)" = "$deps" ] \
        && [ "$("$1/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null)" = "$("$PY" -c 'import sys; print(sys.version)')" ]
}
# A .venv that already holds these pins is left alone, wherever it points (another cache, another
# clone's venv): `make worker` and every other target run this first, and re-linking such a .venv
# changed the environment under a command already running from it.
if [ "$(readlink .venv 2>/dev/null)" != "$store" ] && holds_these_pins .venv; then
    echo "venv: .venv -> $(readlink -f .venv) (holds the pinned dependencies; left as it is)"
    exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ ! -f "$store/.complete" ]; then
    echo "venv: installing pinned dependencies into $store (first time only; torch is large)"
    rm -rf "$store"
    "$PY" -m venv "$store"
    "$store/bin/python" -m pip install -q --upgrade pip
    echo "$deps" > "$store/requirements.txt"
    "$store/bin/python" -m pip install --progress-bar off -r "$store/requirements.txt"
    touch "$store/.complete"
fi
if [ "$(readlink .venv 2>/dev/null)" != "$store" ]; then
    rm -rf .venv
    ln -s "$store" .venv
fi
echo "venv: .venv -> $(readlink -f .venv)"
