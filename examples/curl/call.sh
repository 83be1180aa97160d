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
curl -sS --max-time 5 -w ' HTTP %{http_code}\n' -H 'content-type: application/json' -H 'connect-timeout-ms: 2000' -d '{"name":""}' "$url"
echo

echo "== Connect with a 500 ms deadline (connect-timeout-ms): a slow backend answers HTTP 504 deadline_exceeded"
curl -sS --max-time 5 -w ' HTTP %{http_code}\n' -H 'content-type: application/json' -H 'connect-timeout-ms: 500' \
  -d "{\"name\":\"$name\"}" "$url"

echo "== grpc-web (binary) over HTTP/1.1: a gRPC frame in, frames + a trailer frame out"
len=$(( ${#name} + 2 ))
printf "\x00\x00\x00\x00\\x$(printf %02x "$len")\x0a\\x$(printf %02x "${#name}")%s" "$name" |
  curl -sS --max-time 5 -H 'content-type: application/grpc-web+proto' -H 'x-grpc-web: 1' -H 'grpc-timeout: 2S' \
    --data-binary @- "$url" |
  tr -c '[:print:]\r\n' '.'
echo
