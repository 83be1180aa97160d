//! The sidecar command line `inject` writes is checked with the sidecar's own parser before anything is written,
//! so a bad `--sidecar-arg`, a flag given twice or clashing ports stop `inject` (one line, exit 2) instead of
//! shipping a pod whose sidecar crash-loops.

use clap::FromArgMatches;

use crate::cli::{Cli, Command};

/// Checks `args` (the container's `args`, starting with `sidecar`) as `hello-sidecar` in the pod would parse
/// them: with the sidecar's clap parser ([`Cli`]), ignoring this process's `HELLO_SIDECAR_*` environment (the
/// pod has none of it), then the routes ([`crate::routes::check`]) and the ports. A `--service-config` file is
/// read in the pod, so only its inline JSON is checked here.
///
/// Errors: one line, e.g. `the argument '--listen <LISTEN>' cannot be used multiple times`.
pub fn sidecar_args(args: &[String]) -> Result<(), String> {
    let for_parser = inline_only(args);
    let command = Cli::parser().mut_args(|a| a.env(None)).mut_subcommand("sidecar", |s| s.mut_args(|a| a.env(None)));
    let parsed = command
        .try_get_matches_from(std::iter::once("hello-sidecar".to_owned()).chain(for_parser))
        .and_then(|m| Cli::from_arg_matches(&m))
        .map_err(|e| one_line(&e.to_string()))?;
    let Command::Sidecar(sidecar) = parsed.command else {
        return Err("the sidecar's arguments do not start with 'sidecar'".to_owned());
    };
    crate::routes::check(&sidecar.all_routes()).map_err(|e| format!("invalid value for '--route': {e}"))?;
    if sidecar.listen.port() == sidecar.admin.port() {
        return Err(format!(
            "the admin port {} is the port the app calls (--listen {}): containers of a pod share one network",
            sidecar.admin.port(),
            sidecar.listen
        ));
    }
    Ok(())
}

/// The arguments with each `--service-config` file name replaced by an empty config (`{}`).
fn inline_only(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut value_next = false;
    for arg in args {
        let is_file = |v: &str| !v.trim_start().starts_with('{');
        if value_next {
            out.push(if is_file(arg) { "{}".to_owned() } else { arg.clone() });
            value_next = false;
        } else if arg == "--service-config" {
            out.push(arg.clone());
            value_next = true;
        } else if let Some(v) = arg.strip_prefix("--service-config=")
            && is_file(v)
        {
            out.push("--service-config={}".to_owned());
        } else {
            out.push(arg.clone());
        }
    }
    out
}

/// clap's message on one line: the error and what it lists, without tips and usage.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    if lines.is_empty() {
        "invalid arguments".to_owned()
    } else {
        lines.join(" ").trim_start_matches("error: ").to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str]) -> Result<(), String> {
        let base =
            ["sidecar", "--target=kubernetes:///hello.shop:grpc", "--listen=127.0.0.1:50051", "--admin=0.0.0.0:9901"];
        sidecar_args(&base.iter().chain(args).map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn a_command_line_the_sidecar_accepts_passes() {
        check(&[]).unwrap();
        check(&["--retry-budget=0.1", "--route=acme.Orders=kubernetes:///orders.billing:grpc"]).unwrap();
        check(&["--service-config=/etc/hello/sc.json"]).unwrap();
        check(&["--service-config", "/etc/hello/sc.json"]).unwrap();
        // A descriptor set is read in the pod too: its path is not opened here.
        check(&["--descriptor-set=/etc/hello-sidecar/descriptor-sets/orders.pb"]).unwrap();
    }

    #[test]
    fn unknown_duplicate_and_bad_flags_are_one_line() {
        for (extra, says) in [
            ("--bogus", "unexpected argument '--bogus'"),
            ("--listen=0.0.0.0:50051", "cannot be used multiple times"),
            ("--retry-budget=7", "--retry-budget"),
            ("--service-config={\"methodConfig\": 3}", "--service-config"),
        ] {
            let err = check(&[extra]).unwrap_err();
            assert!(err.contains(says) && !err.contains('\n'), "{extra}: {err}");
        }
    }

    #[test]
    fn the_admin_port_may_not_be_the_listen_port() {
        let args: Vec<String> =
            ["sidecar", "--target=static:///10.0.0.1:80", "--listen=127.0.0.1:9901", "--admin=0.0.0.0:9901"]
                .map(str::to_owned)
                .into();
        assert!(sidecar_args(&args).unwrap_err().contains("admin port 9901"));
    }

    #[test]
    fn a_command_line_without_a_target_is_refused() {
        // Only the arguments count (no HELLO_SIDECAR_TARGET from this process): the pod has no such variable.
        let err = sidecar_args(&["sidecar".to_owned()]).unwrap_err();
        assert!(err.contains("--target"), "{err}");
    }
}
