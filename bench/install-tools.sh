#!/bin/sh
# Installs the load tools the benchmarks compare with (wrk, nginx, haproxy) when
# one is missing and we may: as root, or with passwordless sudo. Never fails:
# a scenario whose tool is still missing is skipped and says so.
missing=""
for tool in wrk nginx haproxy; do
    PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 \
        || missing="$missing $tool"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "bench: missing:$missing (no apt-get here); those scenarios are skipped" >&2
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
else
    echo "bench: missing:$missing (not root, no passwordless sudo); those scenarios are skipped" >&2
    exit 0
fi
echo "bench: installing$missing with apt-get" >&2
# shellcheck disable=SC2086  # $sudo and $missing are word lists
$sudo apt-get update -qq \
    && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing \
    || echo "bench: could not install$missing; those scenarios are skipped" >&2
exit 0
