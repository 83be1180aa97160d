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
    git_sha();
    Ok(())
}

/// `HELLO_SIDECAR_GIT_SHA` for `hello_sidecar_build_info`: the checkout's commit, or `unknown` where there is no
/// git or no `.git` (the Docker build context has none).
fn git_sha() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
    };
    let sha = git(&["rev-parse", "--short=12", "HEAD"]).filter(|s| !s.is_empty());
    println!("cargo:rustc-env=HELLO_SIDECAR_GIT_SHA={}", sha.as_deref().unwrap_or("unknown"));
    // A checkout moves HEAD, a commit moves the branch's ref (paths from git: a worktree's `.git` is a file).
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for path in ["HEAD"].into_iter().chain(branch.as_deref()) {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
