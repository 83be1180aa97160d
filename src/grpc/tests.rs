use super::*;

#[test]
fn a_goaway_names_a_limit_or_a_rule() {
    let e = std::io::Error::other("not h2");
    assert_eq!(goaway_cause(h2::Reason::ENHANCE_YOUR_CALM, &e).0, "an HTTP/2 abuse limit");
    assert_eq!(goaway_cause(h2::Reason::PROTOCOL_ERROR, &e).0, "an HTTP/2 protocol rule");
}

#[test]
fn timeouts_parse_every_unit_and_reject_garbage() {
    assert_eq!(parse_timeout(b"5S"), Some(Duration::from_secs(5)));
    assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
    assert_eq!(parse_timeout(b"2H"), Some(Duration::from_secs(7200)));
    assert_eq!(parse_timeout(b"3M"), Some(Duration::from_secs(180)));
    assert_eq!(parse_timeout(b"7u"), Some(Duration::from_micros(7)));
    assert_eq!(parse_timeout(b"9n"), Some(Duration::from_nanos(9)));
    for bad in [&b""[..], b"S", b"5", b"5s", b"-5S", b"123456789S", b"1.5S", b"\xff"] {
        assert_eq!(parse_timeout(bad), None, "{bad:?}");
    }
}

#[test]
fn timeouts_encode_within_eight_digits_and_round_trip() {
    assert_eq!(encode_timeout(Duration::from_millis(5000)), "5000000u");
    assert_eq!(encode_timeout(Duration::from_nanos(1500)), "1500n");
    assert_eq!(encode_timeout(Duration::from_secs(3600)), "3600000m");
    assert_eq!(encode_timeout(Duration::ZERO), "0n");
    assert_eq!(encode_timeout(Duration::from_secs(u64::MAX)), "99999999M");
    for d in [Duration::from_nanos(1), Duration::from_millis(1234), Duration::from_secs(86_400 * 400)] {
        let enc = encode_timeout(d);
        let digits = enc.len() - 1;
        assert!(digits <= 8, "{enc:?}");
        let back = parse_timeout(enc.as_bytes());
        assert!(back.is_some_and(|back| back >= d || d.as_secs() > 99_999_999), "{enc:?}");
    }
}

#[test]
fn messages_are_percent_decoded() {
    assert_eq!(decode_message(b"name is required"), "name is required");
    assert_eq!(decode_message(b"100%25 ok%0A"), "100% ok\n");
    assert_eq!(decode_message(b"%C3%A9"), "é");
    assert_eq!(decode_message(b"50%zz"), "50%zz");
}

#[test]
fn codes_parse_by_number_and_name() {
    assert_eq!(parse_code("14"), Some(Code::Unavailable));
    assert_eq!(parse_code("UNAVAILABLE"), Some(Code::Unavailable));
    assert_eq!(parse_code("deadline_exceeded"), Some(Code::DeadlineExceeded));
    assert_eq!(parse_code("Internal"), Some(Code::Internal));
    assert_eq!(parse_code("17"), None);
    assert_eq!(parse_code("nope"), None);
    assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
}

#[test]
fn grpc_status_is_read_as_grpc_go_and_grpc_core_read_it() {
    let read = |values: &[&'static str]| {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append("grpc-status", http::HeaderValue::from_static(v));
        }
        status_of(&h)
    };
    assert_eq!(read(&[]), None);
    assert_eq!(read(&["5"]), Some(Code::NotFound));
    assert_eq!(read(&["5", "0"]), Some(Code::Ok), "the last one wins");
    assert_eq!(read(&["abc"]), Some(Code::Internal), "malformed");
    assert_eq!(read(&[""]), Some(Code::Internal), "malformed");
    assert_eq!(read(&["99"]), Some(Code::Unknown), "out of range");
}

#[test]
fn http_statuses_map_as_the_grpc_document_says_unless_grpc_status_is_there() {
    use http::StatusCode as S;
    let cases = [
        (S::OK, None),
        (S::BAD_REQUEST, Some(Code::Internal)),
        (S::UNAUTHORIZED, Some(Code::Unauthenticated)),
        (S::FORBIDDEN, Some(Code::PermissionDenied)),
        (S::NOT_FOUND, Some(Code::Unimplemented)),
        (S::TOO_MANY_REQUESTS, Some(Code::Unavailable)),
        (S::BAD_GATEWAY, Some(Code::Unavailable)),
        (S::SERVICE_UNAVAILABLE, Some(Code::Unavailable)),
        (S::GATEWAY_TIMEOUT, Some(Code::Unavailable)),
        (S::IM_A_TEAPOT, Some(Code::Unknown)),
        (S::INTERNAL_SERVER_ERROR, Some(Code::Unknown)),
    ];
    for (status, code) in cases {
        assert_eq!(code_of_http_status(status), code, "{status}");
        assert_eq!(status_of_response(status, &http::HeaderMap::new()), code, "{status}");
    }
    let mut h = http::HeaderMap::new();
    h.insert("grpc-status", http::HeaderValue::from_static("8"));
    assert_eq!(status_of_response(S::SERVICE_UNAVAILABLE, &h), Some(Code::ResourceExhausted), "grpc-status wins");
}

#[test]
fn resets_map_as_the_grpc_http2_document_says() {
    assert_eq!(code_of_reset(h2::Reason::CANCEL), Code::Cancelled);
    assert_eq!(code_of_reset(h2::Reason::ENHANCE_YOUR_CALM), Code::ResourceExhausted);
    assert_eq!(code_of_reset(h2::Reason::REFUSED_STREAM), Code::Unavailable);
    assert_eq!(code_of_reset(h2::Reason::INADEQUATE_SECURITY), Code::PermissionDenied);
    for r in [h2::Reason::NO_ERROR, h2::Reason::PROTOCOL_ERROR, h2::Reason::INTERNAL_ERROR, h2::Reason::from(99)] {
        assert_eq!(code_of_reset(r), Code::Internal, "{r:?}");
    }
}

#[test]
fn status_messages_are_percent_encoded_and_decode_to_themselves() {
    for m in ["name is required", "100% ok\n", "é", "no route for /x.y/\"q\u{1F600}", "50%zz"] {
        let mut h = http::HeaderMap::new();
        add_status(&mut h, Code::InvalidArgument, m);
        assert_eq!(h["grpc-status"], "3");
        let v = h["grpc-message"].as_bytes();
        assert!(v.iter().all(|b| (0x20..=0x7e).contains(b)), "{m:?}: {v:?}");
        assert_eq!(decode_message(v), m);
    }
    let mut h = http::HeaderMap::new();
    add_status(&mut h, Code::Ok, "");
    assert_eq!(h["grpc-status"], "0");
    assert!(h.get("grpc-message").is_none());
}

#[test]
fn only_a_peers_stream_reset_is_a_stream_reset() {
    let reset = h2::Error::from(h2::Reason::CANCEL);
    assert_eq!(stream_reset(&reset), None, "a bare reason is not a stream reset");
    let io = std::io::Error::other("gone");
    assert_eq!(stream_reset(&io), None);
}

#[test]
fn scanner_finds_oversized_messages_across_chunk_boundaries() {
    let mut s = MessageScanner::default();
    // A 3-byte message, then a prefix split over two chunks announcing 1000 bytes.
    assert_eq!(s.feed(&[0, 0, 0, 0, 3, 1, 2, 3, 0, 0], 100), None);
    assert_eq!(s.feed(&[0, 3, 0xe8], 100), Some(1000));
    let mut ok = MessageScanner::default();
    let mut body = vec![0, 0, 0, 0, 50];
    body.extend([7u8; 50]);
    body.extend([0, 0, 0, 0, 100]);
    body.extend([7u8; 100]);
    for chunk in body.chunks(7) {
        assert_eq!(ok.feed(chunk, 100), None);
    }
}

#[test]
fn the_code_table_is_indexed_by_number() {
    for (i, (code, name, connect)) in CODES.iter().enumerate() {
        assert_eq!(*code as usize, i, "{name}");
        assert_eq!(connect_code_name(*code), *connect);
        assert_eq!(parse_code(name), Some(*code));
    }
    assert_eq!(connect_code_name(Code::Cancelled), "canceled");
    assert_eq!(&frame(0x80, b"ab")[..], &[0x80, 0, 0, 0, 2, b'a', b'b']);
}
