//! Compiles `proto/` with protox (a pure-Rust .proto compiler), so a fresh machine needs no `protoc`.
//!
//! The encoded descriptor set is also written to `OUT_DIR` for gRPC reflection and for the JSON mapping used by
//! non-gRPC callers.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["hello/v1/hello.proto"], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("hello_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    // A second service the library is not compiled with, for the tests' routes (tests/common/echo.rs).
    let echo = protox::compile(["echo/v1/echo.proto"], ["proto"])?;
    // Its descriptor set, for the test backends' reflection (tests/reflection.rs).
    fs::write(out.join("echo_descriptor.bin"), echo.encode_to_vec())?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(echo)?;
    Ok(())
}
