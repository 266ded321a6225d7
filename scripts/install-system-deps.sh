#!/usr/bin/env bash
# Debian packages the tests need: real Prosody 0.12 (the oracle and the end-to-end server), its
# LuaDBI drivers, Lua 5.4, and tools ansible-test sanity calls. Installs only what is missing.
set -euo pipefail
packages=(prosody lua-dbi-sqlite3 lua-dbi-postgresql lua-dbi-mysql lua5.4 shellcheck rsync)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The package starts a Prosody on the standard ports where an init system runs; tests start
# their own servers, so make sure a packaged one is not in the way.
if pgrep -x prosody >/dev/null 2>&1 || pgrep -f '^lua.* /usr/bin/prosody' >/dev/null 2>&1; then
  prosodyctl stop >/dev/null 2>&1 || pkill -f '/usr/bin/prosody' || true
fi
