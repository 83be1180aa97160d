#!/usr/bin/env bash
# Tests e2e/prereqs.sh itself, with fake tools on a private PATH: the kind tier must stop loudly, never pass
# silently, whenever a prerequisite is missing. Runs anywhere (no docker needed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=prereqs.sh
source "$here/prereqs.sh"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fails=0
expect() { # expect <0|1> <description> <tools...>
  local want="$1" what="$2"; shift 2
  rm -rf "$tmp/bin" && mkdir -p "$tmp/bin"
  for t in "$@"; do
    case "$t" in
      docker-down) printf '#!/bin/sh\n[ "$1" = info ] && exit 1\nexit 0\n' > "$tmp/bin/docker" ;;
      *) printf '#!/bin/sh\nexit 0\n' > "$tmp/bin/$t" ;;
    esac
    chmod +x "$tmp/bin/"*
  done
  local got=0 err
  err="$(PATH="$tmp/bin" check_prereqs 2>&1)" || got=1
  if [ "$got" != "$want" ]; then
    echo "FAIL: $what: check_prereqs returned $got, wanted $want ($err)"; fails=$((fails + 1))
  elif [ "$want" = 1 ] && [ -z "$err" ]; then
    echo "FAIL: $what: failed without saying why"; fails=$((fails + 1))
  else
    echo "ok: $what${err:+ -> $(echo "$err" | head -1)}"
  fi
}
expect 0 "all present and the engine up" docker kind helm kubectl
expect 1 "kind missing" docker helm kubectl
expect 1 "helm missing" docker kind kubectl
expect 1 "kubectl missing" docker kind helm
expect 1 "docker missing" kind helm kubectl
expect 1 "docker engine not running" docker-down kind helm kubectl
expect 1 "nothing installed"
# The entry script itself refuses to run without them (here: an empty PATH apart from bash's builtins).
if PATH="$tmp/empty" "$BASH" "$here/run.sh" >/dev/null 2>"$tmp/run.err"; then
  echo "FAIL: e2e/run.sh passed without prerequisites"; fails=$((fails + 1))
elif ! grep -q "missing prerequisite" "$tmp/run.err"; then
  echo "FAIL: e2e/run.sh failed without naming the missing prerequisite: $(cat "$tmp/run.err")"; fails=$((fails + 1))
else
  echo "ok: e2e/run.sh stops with a clear message"
fi
echo "$((8 - fails)) passed, $fails failed"
[ "$fails" = 0 ]
