//! The `hello-sidecar` binary: parse flags, start logging, run the chosen role.

use std::process::ExitCode;

use hello_sidecar::{
    cli::{Cli, Command},
    client, demo, inbound, inject,
    routes::RouteError,
    server, shutdown, sidecar, telemetry,
};

fn main() -> ExitCode {
    let cli = match Cli::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line naming the flag; the full usage is one `--help` away.
            let text = e.render().to_string();
            let first: Vec<&str> = text.split("\n\n").next().unwrap_or("").lines().map(str::trim).collect();
            eprintln!("{}", first.join(" "));
            return ExitCode::from(2);
        }
    };
    // Routes that contradict each other are a bad flag value too: one line, exit 2.
    if let Command::Sidecar(args) = &cli.command
        && let Err(e) = hello_sidecar::routes::check(&args.all_routes())
    {
        // `--target` is HelloService's route: say so when it is the other half of a duplicate.
        let hello = hello_sidecar::proxy::route::HELLO_SERVICE;
        let target = if args.target.is_some() && e == RouteError::Duplicate(hello.into()) {
            format!(" (--target routes {hello}: give one or the other)")
        } else {
            String::new()
        };
        eprintln!("error: invalid value for '--route': {e}{target}");
        return ExitCode::from(2);
    }
    // A descriptor set that cannot be read or decoded: a bad flag value too.
    if let Command::Sidecar(args) = &cli.command
        && let Err(e) = args.descriptor_pool()
    {
        eprintln!("error: invalid value for '--descriptor-set': {e}");
        return ExitCode::from(2);
    }
    // An access log file that cannot be opened (a missing directory, no permission): a bad flag value too.
    if let Command::Sidecar(args) = &cli.command
        && let Some(sink) = &args.access_log
        && let Err(e) = telemetry::access_log::check(sink)
    {
        eprintln!("error: --access-log {sink}: {e}");
        return ExitCode::from(2);
    }
    // A key that does not match its certificate, a CA bundle rustls cannot use: bad flag values too.
    if let Err(e) = hello_sidecar::cli::check_tls(&cli.command) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // Two listeners on one port, `inbound` forwarding to itself: bad flag values too, found before binding.
    if let Err(e) = hello_sidecar::cli::check_addrs(&cli.command) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // `inject` is a filter: no runtime, no logs, YAML on stdout, one line and exit 2 for bad input.
    if let Command::Inject(args) = &cli.command {
        return match inject::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    // The demo's story is on stdout; its logs stay quiet unless RUST_LOG asks.
    // The API outage it stages makes kube's client log errors; the demo narrates that outage itself.
    let default_level =
        if matches!(cli.command, Command::Demo(_)) { "error,kube_client=off,kube_runtime=off" } else { "info" };
    telemetry::init_logging(cli.log_format, default_level);
    // The sidecar runs on one thread by default, as linkerd2-proxy does: a call crosses several tasks (inbound
    // stream, upstream connection), and on one thread each hop is a queue push instead of a cross-thread wakeup.
    let threads = match &cli.command {
        Command::Sidecar(args) => args.threads,
        _ => 0,
    };
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Sidecar(args) => match sidecar::start(*args, shutdown::signal()).await {
            Ok(running) => {
                let _ = running.done.await;
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Server(args) => match server::run(args, shutdown::signal(), None).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Call(args) if args.interval.is_some() => {
            let interval = args.interval.unwrap_or_default();
            let each = |o: &client::Outcome| out(format_args!("{}\n", client::outcome_line(o)));
            match client::run_loop(&args, interval, each).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Call(args) => match client::run(&args).await {
            Ok(summary) => {
                if args.json {
                    out(format_args!("{}\n", serde_json::to_string(&summary).unwrap_or_default()));
                } else {
                    out(format_args!("{summary}"));
                }
                if summary.all_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Inbound(args) => match inbound::start(args, shutdown::signal()).await {
            Ok(running) => {
                let _ = running.done.await;
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Demo(args) => match demo::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Inject(_) => ExitCode::SUCCESS, // handled before the runtime starts
    }
}

/// Writes to stdout; when the reader has gone (`call … | head`) the process ends quietly, as ripgrep does, where
/// `print!` would panic on the broken pipe (and `call --interval` must not go on calling for no one).
fn out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    tracing::error!("{e}");
    eprintln!("error: {e}");
    ExitCode::FAILURE
}
