//! Who may know a symbol or a file the sidecar does not hold: the candidate targets of one reflection request, in
//! the order they are asked, and what a caller's stream remembers between its requests.

use std::{collections::HashMap, sync::Arc};

use super::{Reflector, upstream};
use crate::proxy::Balancer;

impl Reflector {
    /// Who may know `symbol`: the route of its service, routes of its package, targets that answered on this
    /// stream, then `*`.
    pub(super) fn owners_of_symbol(&self, stream: &StreamState, symbol: &str) -> Vec<Arc<Balancer>> {
        let mut out = Vec::new();
        let exact = self.routes.services().filter(|(s, _)| symbol == *s || is_child(symbol, s));
        push_unique(&mut out, exact.map(|(_, b)| b.clone()));
        let same_package = self.routes.services().filter(|(s, _)| in_package(symbol, package(s)));
        push_unique(&mut out, same_package.map(|(_, b)| b.clone()));
        self.then_stream_and_default(out, stream)
    }

    /// Who may have file `name`: targets that answered on this stream (a file's dependencies come from where the
    /// file came from), routes whose package is the file's directory (`echo/v1/echo.proto` for `echo.v1`), `*`.
    pub(super) fn owners_of_file(&self, stream: &StreamState, name: &str) -> Vec<Arc<Balancer>> {
        let mut out = Vec::new();
        push_unique(&mut out, stream.answered.iter().cloned());
        let by_dir = self.routes.services().filter(|(s, _)| match package(s) {
            // A .proto without a package: a file at the top (`orders.proto`).
            "" => !name.contains('/'),
            p => name.starts_with(&format!("{}/", p.replace('.', "/"))),
        });
        push_unique(&mut out, by_dir.map(|(_, b)| b.clone()));
        self.then_stream_and_default(out, stream)
    }

    fn then_stream_and_default(&self, mut out: Vec<Arc<Balancer>>, stream: &StreamState) -> Vec<Arc<Balancer>> {
        push_unique(&mut out, stream.answered.iter().cloned());
        push_unique(&mut out, self.routes.default_route().cloned());
        out
    }
}

/// Per caller stream: the endpoint pinned for each target, and the targets that answered (most recent first).
#[derive(Default)]
pub(super) struct StreamState {
    pinned: HashMap<String, upstream::Pinned>,
    answered: Vec<Arc<Balancer>>,
}

impl StreamState {
    pub(super) fn pinned(&mut self, target: &str) -> &mut upstream::Pinned {
        self.pinned.entry(target.to_owned()).or_default()
    }

    pub(super) fn answered(&mut self, balancer: Arc<Balancer>) {
        self.answered.retain(|b| !Arc::ptr_eq(b, &balancer));
        self.answered.insert(0, balancer);
    }
}

fn push_unique(out: &mut Vec<Arc<Balancer>>, more: impl IntoIterator<Item = Arc<Balancer>>) {
    for b in more {
        if !out.iter().any(|o| Arc::ptr_eq(o, &b)) {
            out.push(b);
        }
    }
}

/// `a.b.C.D` is a child of `a.b.C` and of `a.b`.
fn is_child(symbol: &str, parent: &str) -> bool {
    symbol.strip_prefix(parent).is_some_and(|rest| rest.starts_with('.'))
}

/// The package of a fully qualified service name (`acme.orders.v1` of `acme.orders.v1.OrderService`); empty for
/// a service declared in a `.proto` without a `package` (`Orders`).
fn package(service: &str) -> &str {
    service.rsplit_once('.').map_or("", |(p, _)| p)
}

/// Whether `symbol` is declared in `package`: for no package, a top-level name (`OrderRequest`).
fn in_package(symbol: &str, package: &str) -> bool {
    if package.is_empty() { !symbol.contains('.') } else { is_child(symbol, package) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::RouteTable;

    #[test]
    fn symbols_belong_to_their_service_and_package() {
        assert!(is_child("echo.v1.EchoService.Echo", "echo.v1.EchoService"));
        assert!(is_child("echo.v1.EchoRequest", "echo.v1"));
        assert!(!is_child("echo.v10.X", "echo.v1"));
        assert!(!is_child("echo.v1", "echo.v1"));
        assert_eq!(package("acme.orders.v1.OrderService"), "acme.orders.v1");
        assert_eq!(package("Orders"), "");
        assert!(in_package("OrderRequest", "") && !in_package("echo.v1.EchoRequest", ""));
        assert!(in_package("echo.v1.EchoRequest", "echo.v1"));
    }

    fn balancer(name: &str) -> Arc<Balancer> {
        let settings = crate::balance::Settings {
            pool: crate::pool::Settings::default(),
            eject_after: 5,
            ewma_decay: std::time::Duration::from_secs(1),
        };
        Arc::new(Balancer::new(name.into(), settings, Arc::default()))
    }

    fn names(list: &[Arc<Balancer>]) -> Vec<&str> {
        list.iter().map(|b| b.target()).collect()
    }

    #[test]
    fn the_owning_route_is_asked_first_then_the_stream_s_targets_then_the_default() {
        use crate::routes::ServiceMatch::{Any, Exact};
        let (orders, stock, rest) = (balancer("orders"), balancer("stock"), balancer("rest"));
        let mut routes = RouteTable::default();
        routes.insert(&Exact("acme.orders.v1.OrderService".into()), orders.clone()).expect("route");
        routes.insert(&Exact("acme.stock.v1.StockService".into()), stock.clone()).expect("route");
        routes.insert(&Any, rest.clone()).expect("route");
        let r = Reflector::new(Vec::new(), routes);
        let mut stream = StreamState::default();
        assert_eq!(names(&r.owners_of_symbol(&stream, "acme.orders.v1.OrderService.Get")), ["orders", "rest"]);
        assert_eq!(names(&r.owners_of_symbol(&stream, "acme.stock.v1.Item")), ["stock", "rest"]);
        assert_eq!(names(&r.owners_of_symbol(&stream, "other.Thing")), ["rest"]);
        assert_eq!(names(&r.owners_of_file(&stream, "acme/stock/v1/stock.proto")), ["stock", "rest"]);
        // A file's imports come from where the file came from.
        stream.answered(orders.clone());
        assert_eq!(names(&r.owners_of_file(&stream, "google/type/money.proto")), ["orders", "rest"]);
        assert_eq!(names(&r.owners_of_symbol(&stream, "google.type.Money")), ["orders", "rest"]);
        stream.answered(stock);
        stream.answered(orders);
        assert_eq!(names(&r.owners_of_file(&stream, "x.proto")), ["orders", "stock", "rest"]);
    }
}
