#!/usr/bin/env bash
# HelloService from the shell through the sidecar: Connect (JSON) and grpc-web (binary), plain curl.
#   examples/curl/call.sh [ADDR] [NAME]
set -euo pipefail
addr="${1:-127.0.0.1:50051}"
name="${2:-world}"
url="http://$addr/hello.v1.HelloService/SayHello"

echo "== Connect, JSON"
curl -sS --max-time 5 -H 'content-type: application/json' -H 'connect-timeout-ms: 2000' \
  -d "{\"name\":\"$name\"}" "$url"
echo

echo "== Connect, an error (empty name): HTTP status and Connect's error JSON"
curl -sS --max-time 5 -o /dev/stderr -w 'HTTP %{http_code}\n' -H 'content-type: application/json' -d '{"name":""}' "$url" 2>&1
echo

echo "== grpc-web (binary) over HTTP/1.1: a gRPC frame in, frames + a trailer frame out"
len=$(( ${#name} + 2 ))
printf "\x00\x00\x00\x00\\x$(printf %02x "$len")\x0a\\x$(printf %02x "${#name}")%s" "$name" |
  curl -sS --max-time 5 -H 'content-type: application/grpc-web+proto' -H 'x-grpc-web: 1' --data-binary @- "$url" |
  tr -c '[:print:]\r\n' '.'
echo
