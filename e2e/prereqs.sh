#!/usr/bin/env bash
# Checks what the kind tier needs: docker with a running engine, kind, helm, kubectl.
# Prints one line per missing piece and returns non-zero when anything is missing; never a silent pass.
check_prereqs() {
  local missing=0
  for tool in docker kind helm kubectl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "missing prerequisite: $tool is not on PATH" >&2
      missing=1
    fi
  done
  if command -v docker >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
    echo "missing prerequisite: docker is installed but its engine is not running (docker info failed)" >&2
    missing=1
  fi
  return "$missing"
}
