//! Addresses of one role that cannot work together: two listeners on one socket, or `inbound` forwarding to its
//! own listener. Each flag parses alone; only together do they fail, and without this check the second bind failed
//! (exit 1) after the first listener was already up.

use std::net::SocketAddr;

use super::Command;

/// Checks the addresses `command` binds and forwards to. Errors: one line naming the flag, for exit code 2.
pub fn check(command: &Command) -> Result<(), String> {
    match command {
        Command::Sidecar(args) => distinct(("--listen", args.listen), ("--admin", args.admin)),
        Command::Server(args) => {
            args.admin.map_or(Ok(()), |admin| distinct(("--listen", args.listen), ("--admin", admin)))
        }
        Command::Inbound(args) => {
            distinct(("--listen", args.listen), ("--admin", args.admin))?;
            if args.forward.port() == 0 {
                return Err(format!(
                    "invalid value for '--forward': {} has port 0, which no app listens on",
                    args.forward
                ));
            }
            for (flag, own) in [("--listen", args.listen), ("--admin", args.admin)] {
                if same_socket(own, args.forward) {
                    return Err(format!(
                        "invalid value for '--forward': {} is this proxy's own {flag} {own}; give the app's address",
                        args.forward
                    ));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `Ok` unless both listeners would bind one socket.
fn distinct(first: (&str, SocketAddr), second: (&str, SocketAddr)) -> Result<(), String> {
    if same_socket(first.1, second.1) {
        return Err(format!(
            "invalid value for '{}': {} takes the port of {} {}; give each its own port",
            second.0, second.1, first.0, first.1
        ));
    }
    Ok(())
}

/// Whether a listener on `a` and one on `b` would collide (or a connection to one reach the other): one port
/// (never 0, which picks a free one), and one address or a wildcard covering the other (`0.0.0.0` covers IPv4,
/// `[::]` both families on Linux's default dual-stack sockets).
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |w: SocketAddr, o: SocketAddr| w.ip().is_unspecified() && (w.is_ipv6() || o.is_ipv4());
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_collide_on_one_port_and_a_covering_address() {
        let s = |a: &str| a.parse::<SocketAddr>().unwrap_or_else(|e| panic!("{a}: {e}"));
        assert!(same_socket(s("127.0.0.1:80"), s("127.0.0.1:80")));
        assert!(same_socket(s("0.0.0.0:80"), s("127.0.0.1:80")));
        assert!(same_socket(s("127.0.0.1:80"), s("[::]:80")));
        assert!(!same_socket(s("0.0.0.0:80"), s("[::1]:80")));
        assert!(!same_socket(s("127.0.0.1:80"), s("127.0.0.2:80")));
        assert!(!same_socket(s("127.0.0.1:80"), s("127.0.0.1:81")));
        assert!(!same_socket(s("127.0.0.1:0"), s("127.0.0.1:0")));
    }
}
