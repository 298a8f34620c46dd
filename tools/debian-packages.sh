#!/bin/sh
# Install the Debian packages the Makefile needs and does not find.
#
#   tools/debian-packages.sh COMMAND:PACKAGE ...   install PACKAGE unless COMMAND is found
#   tools/debian-packages.sh PACKAGE ...           install each PACKAGE
#
# As root they are installed with apt-get. Otherwise nothing is changed: the
# exact apt-get command to run is printed and the script fails, so make stops.
set -eu

need=""
for wanted in "$@"; do
    case "$wanted" in
        *:*)
            command=${wanted%%:*}
            package=${wanted#*:}
            if command -v "$command" >/dev/null 2>&1 || [ -x "/usr/sbin/$command" ]; then
                continue
            fi
            ;;
        *)
            package=$wanted
            ;;
    esac
    need="$need $package"
done
need=${need# }
[ -n "$need" ] || exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "appserver needs these programs, packaged by Debian as: $need. Install them with this system's package manager, then run make again." >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "appserver needs these Debian packages: $need. Run this as root, then run make again:" >&2
    echo "    apt-get update && apt-get install -y $need" >&2
    exit 1
fi
echo "installing Debian packages: $need"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
