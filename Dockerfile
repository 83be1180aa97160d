# syntax=docker/dockerfile:1
# One image for every role: `server`, `sidecar`, `call`, `demo`.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first: edits to src/ reuse this layer. Cargo reads every target the manifest names before it
# builds anything, so the `[[bench]]` sources come along (they are not compiled by `cargo build`).
# scripts/docker_replay.py replays this stage in the test command: a file missing here fails the tests.
COPY Cargo.toml Cargo.lock build.rs rustfmt.toml ./
COPY proto proto
COPY benches benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && strip target/release/hello-sidecar

# glibc, CA certificates, no shell, no package manager; runs as the numeric non-root user 65532 and writes
# nothing, so a read-only root filesystem is fine.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/hello-sidecar /usr/local/bin/hello-sidecar
USER 65532:65532
# 50051: the sidecar (loopback by default), 9901: admin, 8080: the backend.
EXPOSE 50051 9901 8080
ENTRYPOINT ["/usr/local/bin/hello-sidecar"]
CMD ["--help"]
