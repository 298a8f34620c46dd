#!/bin/sh
# Make the virtualenv every make target runs in, so nothing is installed
# into (or needs activating in) the Python that made it:
#
#   tools/make-venv.sh PYTHON DIR
#
# PYTHON is any Python 3.11 or newer: Debian's /usr/bin/python3 (externally
# managed), pyenv's, or one built by hand. Debian ships venv's pip bootstrap
# apart, in python3-venv: it is installed when missing if we are root,
# otherwise the command to run is printed (tools/debian-packages.sh).
set -eu
python=$1
directory=$2
here=$(dirname "$0")

if ! command -v "$python" >/dev/null 2>&1; then
    echo "no $python on PATH: install Python 3.11 or newer, or name one with make PYTHON=/path/to/python3" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "appserver needs Python 3.11 or newer and $python is $("$python" -V 2>&1): name another with make PYTHON=python3.12 (for example)" >&2
    exit 1
fi
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    package="python$version-venv"
    if [ "$(readlink -f "$(command -v "$python")")" = "$(readlink -f /usr/bin/python3 2>/dev/null || true)" ]; then
        package=python3-venv
    fi
    sh "$here/debian-packages.sh" "$package"
fi
echo "making the virtualenv $directory with $python ($("$python" -V 2>&1))"
if ! "$python" -m venv "$directory"; then
    rm -rf "$directory"
    exit 1
fi
