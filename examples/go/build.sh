#!/usr/bin/env bash
# Builds the Go client and server offline from Debian's packages, in GOPATH mode:
#   apt-get install golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev \
#     golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
# Generated code goes under .gopath/src/<go_package>, as hello.proto's go_package says.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
gopath="$here/.gopath"
gen="$gopath/src/example.com/hello/gen"
mkdir -p "$gen" "$here/bin"
protoc -I "$root/proto" --go_out="$gopath/src" --go-grpc_out="$gopath/src" hello/v1/hello.proto
for cmd in client server; do
  mkdir -p "$gopath/src/example.com/hello/cmd/$cmd"
  cp "$here/cmd/$cmd/main.go" "$gopath/src/example.com/hello/cmd/$cmd/main.go"
  (cd "$gopath/src/example.com/hello/cmd/$cmd" &&
    GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="$here/.gocache" \
      go build -o "$here/bin/hello-$cmd" .)
done
echo "built $here/bin/hello-client and $here/bin/hello-server"
