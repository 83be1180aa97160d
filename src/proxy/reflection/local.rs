//! Reflection answered from a descriptor pool the sidecar holds (the compiled schema): which file defines a
//! symbol, a file by name, extensions. Symbols are the ones tonic-reflection and grpc-go resolve: packages'
//! services, methods, messages (nested too), fields, oneofs, enums, enum values and extensions.

use prost_reflect::{DescriptorPool, FileDescriptor};

/// The file that defines `symbol`, if the pool has it.
pub fn file_of_symbol(pool: &DescriptorPool, symbol: &str) -> Option<FileDescriptor> {
    let whole = pool
        .get_service_by_name(symbol)
        .map(|s| s.parent_file())
        .or_else(|| pool.get_message_by_name(symbol).map(|m| m.parent_file()))
        .or_else(|| pool.get_enum_by_name(symbol).map(|e| e.parent_file()))
        .or_else(|| pool.get_extension_by_name(symbol).map(|e| e.parent_file()));
    if whole.is_some() {
        return whole;
    }
    // A member: `pkg.Service.Method`, `pkg.Message.field`, `pkg.Message.oneof`, `pkg.Enum.VALUE`.
    let (parent, member) = symbol.rsplit_once('.')?;
    if let Some(s) = pool.get_service_by_name(parent) {
        return s.methods().any(|m| m.name() == member).then(|| s.parent_file());
    }
    if let Some(m) = pool.get_message_by_name(parent) {
        let has = m.get_field_by_name(member).is_some() || m.oneofs().any(|o| o.name() == member);
        return has.then(|| m.parent_file());
    }
    let e = pool.get_enum_by_name(parent)?;
    e.get_value_by_name(member).is_some().then(|| e.parent_file())
}

/// The file a file and its transitive dependencies, the requested one first, each once (what grpc-go's
/// reflection server sends, so a client needs no second round trip).
pub fn with_dependencies(file: FileDescriptor) -> Vec<Vec<u8>> {
    let mut seen = vec![file.name().to_owned()];
    let mut out = vec![file.encode_to_vec()];
    let mut todo: Vec<FileDescriptor> = file.dependencies().collect();
    while let Some(f) = todo.pop() {
        if seen.iter().any(|s| s == f.name()) {
            continue;
        }
        seen.push(f.name().to_owned());
        out.push(f.encode_to_vec());
        todo.extend(f.dependencies());
    }
    out
}

/// The file that defines extension `number` of message `extendee`, if the pool has both.
pub fn file_of_extension(pool: &DescriptorPool, extendee: &str, number: i32) -> Option<FileDescriptor> {
    let number = u32::try_from(number).ok()?;
    pool.get_message_by_name(extendee)?.get_extension(number).map(|e| e.parent_file())
}

/// The numbers of every known extension of `extendee`, if the pool has that message.
pub fn extension_numbers(pool: &DescriptorPool, extendee: &str) -> Option<Vec<i32>> {
    let m = pool.get_message_by_name(extendee)?;
    Some(m.extensions().filter_map(|e| i32::try_from(e.number()).ok()).collect())
}

/// The services the pool defines, by full name.
pub fn services(pool: &DescriptorPool) -> impl Iterator<Item = String> + '_ {
    pool.services().map(|s| s.full_name().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("compiled set")
    }

    #[test]
    fn symbols_resolve_to_their_file() {
        let pool = pool();
        for symbol in [
            "hello.v1.HelloService",
            "hello.v1.HelloService.SayHello",
            "hello.v1.HelloRequest",
            "hello.v1.HelloRequest.name",
        ] {
            let f = file_of_symbol(&pool, symbol).unwrap_or_else(|| panic!("{symbol}"));
            assert_eq!(f.name(), "hello/v1/hello.proto");
        }
        for symbol in ["hello.v1.HelloService.Nope", "hello.v1", "echo.v1.EchoService", "", "hello.v1.HelloRequest.x"] {
            assert!(file_of_symbol(&pool, symbol).is_none(), "{symbol}");
        }
        let files = with_dependencies(file_of_symbol(&pool, "hello.v1.HelloService").expect("known"));
        assert_eq!(files.len(), 1 + pool.get_file_by_name("hello/v1/hello.proto").expect("f").dependencies().len());
        assert_eq!(extension_numbers(&pool, "hello.v1.HelloRequest"), Some(Vec::new()));
        assert!(extension_numbers(&pool, "x.Y").is_none());
        assert!(file_of_extension(&pool, "hello.v1.HelloRequest", 100).is_none());
        assert!(services(&pool).any(|s| s == "hello.v1.HelloService"));
    }
}
