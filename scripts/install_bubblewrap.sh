#!/usr/bin/env bash
# Installs bubblewrap, the sandbox autoresearch runs every proposal in (`autoresearch run` refuses
# to run proposals without it unless told `--isolation none`). Called by scripts/setup.sh.
# Does nothing when `bwrap` is already on PATH; installs it quietly as root with apt-get or dnf;
# otherwise prints the one command to run and carries on (it never fails the setup).
set -uo pipefail
if command -v bwrap >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  tool=apt-get
elif command -v dnf >/dev/null 2>&1; then
  tool=dnf
else
  tool=
fi
if [ "$(id -u)" = 0 ] && [ -n "$tool" ]; then
  if [ "$tool" = apt-get ]; then
    # A fresh Debian image has no package lists yet.
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; } >/dev/null 2>&1
  else
    dnf install -y -q bubblewrap >/dev/null 2>&1
  fi
  if command -v bwrap >/dev/null 2>&1; then
    echo "installed bubblewrap ($tool): proposals will run sandboxed"
    exit 0
  fi
  echo "could not install bubblewrap with $tool"
fi
if [ -n "$tool" ]; then
  hint="sudo $tool install bubblewrap"
else
  hint="install the bubblewrap package with your package manager"
fi
echo "bubblewrap is missing: autoresearch refuses to run proposals without its sandbox. Install it: $hint"
echo "(or run proposals unsandboxed, knowingly: autoresearch run --isolation none ...)"
exit 0
