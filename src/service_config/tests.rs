use super::*;

const FULL: &str = r#"{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [
    {"name": [{"service": "acme.orders.v1.OrderService", "method": "Get"}],
     "timeout": "1.5s", "waitForReady": true, "someFutureField": 1,
     "retryPolicy": {"maxAttempts": 9, "initialBackoff": "0.1s", "maxBackoff": "1s",
                     "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "resource_exhausted", 10]}},
    {"name": [{"service": "acme.orders.v1.OrderService"}], "timeout": "3s"},
    {"name": [{"service": "acme.search.v1.Search", "method": "Query"}],
     "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.050s", "nonFatalStatusCodes": ["UNAVAILABLE"]}},
    {"name": [{}], "timeout": "10s"}
  ]
}"#;

fn parse_err(json: &str) -> String {
    ServiceConfig::parse(json).map(|_| ()).expect_err("must be rejected").to_string()
}

#[test]
fn the_most_specific_name_wins() {
    let c = ServiceConfig::parse(FULL).expect("valid");
    let get = c.lookup("/acme.orders.v1.OrderService/Get").expect("method policy");
    assert_eq!(get.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(get.wait_for_ready, Some(true));
    let retry = get.retry.as_ref().expect("retry policy");
    assert_eq!(retry.max_attempts, 5, "values over 5 are treated as 5 (gRFC A6)");
    assert_eq!((retry.initial_backoff, retry.max_backoff), (Duration::from_millis(100), Duration::from_secs(1)));
    assert!(retry.retryable.contains(Code::Unavailable) && retry.retryable.contains(Code::ResourceExhausted));
    assert!(retry.retryable.contains(Code::Aborted), "10 is ABORTED");
    assert!(!retry.retryable.contains(Code::Internal));
    let list = c.lookup("/acme.orders.v1.OrderService/List").expect("service policy");
    assert_eq!((list.timeout, list.retry.is_none()), (Some(Duration::from_secs(3)), true));
    let other = c.lookup("/other.v1.Other/Call").expect("default policy");
    assert_eq!(other.timeout, Some(Duration::from_secs(10)));
    let hedged = c.lookup("/acme.search.v1.Search/Query").and_then(|p| p.hedging.clone()).expect("hedging");
    assert_eq!((hedged.max_attempts, hedged.delay), (3, Duration::from_millis(50)));
    assert!(hedged.non_fatal.contains(Code::Unavailable));
    assert!(c.lookup("no-slash").is_none());
}

#[test]
fn hedging_max_attempts_is_capped_at_five_and_the_delay_defaults_to_zero() {
    let c = ServiceConfig::parse(
        r#"{"methodConfig": [{"name": [{}], "hedgingPolicy": {"maxAttempts": 12, "nonFatalStatusCodes": [14]}}]}"#,
    )
    .expect("valid");
    let hedged = c.lookup("/a.B/C").and_then(|p| p.hedging.clone()).expect("hedging");
    assert_eq!(hedged.max_attempts, 5, "gRFC A6: values over 5 are treated as 5");
    assert_eq!(hedged.delay, Duration::ZERO, "gRFC A6: unset sends every attempt at once");
    assert!(hedged.non_fatal.contains(Code::Unavailable));
}

#[test]
fn without_a_default_unnamed_methods_have_no_policy() {
    let c =
        ServiceConfig::parse(r#"{"methodConfig": [{"name": [{"service": "a.B"}], "timeout": "1s"}]}"#).expect("valid");
    assert!(c.lookup("/a.B/X").is_some());
    assert!(c.lookup("/a.C/X").is_none());
    assert!(ServiceConfig::parse("{}").expect("empty config").is_empty());
}

#[test]
fn malformed_configs_name_their_json_path() {
    assert_eq!(
        parse_err(r#"{"methodConfig": [{"name": [{"service": "a.B"}], "timeout": "soon"}]}"#),
        format!("methodConfig[0].timeout: {DURATION_FORMAT}")
    );
    assert_eq!(
        parse_err(
            r#"{"methodConfig": [{}, {"name": [{"service": "a.B"}], "retryPolicy": {"maxAttempts": 1,
            "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#
        ),
        "methodConfig[1].retryPolicy.maxAttempts: must be at least 2"
    );
    let no_codes = r#"{"methodConfig": [{"name": [{"service": "a.B"}], "retryPolicy": {"maxAttempts": 2,
        "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": []}}]}"#;
    assert_eq!(
        parse_err(no_codes),
        "methodConfig[0].retryPolicy.retryableStatusCodes: must name at least one status code"
    );
    let bad_code = r#"{"methodConfig": [{"name": [{"service": "a.B"}], "retryPolicy": {"maxAttempts": 2,
        "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["NOPE"]}}]}"#;
    assert!(parse_err(bad_code).starts_with("methodConfig[0].retryPolicy.retryableStatusCodes[0]: not a gRPC"));
    let zero = r#"{"methodConfig": [{"name": [{"service": "a.B"}], "retryPolicy": {"maxAttempts": 2,
        "initialBackoff": "0s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": [14]}}]}"#;
    assert_eq!(parse_err(zero), "methodConfig[0].retryPolicy.initialBackoff: must be greater than 0");
    let both = r#"{"methodConfig": [{"name": [{"service": "a.B"}], "hedgingPolicy": {"maxAttempts": 2},
        "retryPolicy": {}}]}"#;
    assert!(parse_err(both).starts_with("methodConfig[0]: retryPolicy and hedgingPolicy exclude each other"));
    assert_eq!(
        parse_err(r#"{"methodConfig": [{"name": [{"method": "X"}]}]}"#),
        "methodConfig[0].name[0]: a method needs its service"
    );
    let twice = r#"{"methodConfig": [{"name": [{"service": "a.B"}]}, {"name": [{"service": "a.B"}]}]}"#;
    assert_eq!(parse_err(twice), "methodConfig[1].name[0]: this name appears twice");
    assert!(parse_err(r#"{"methodConfig": [{"timeout": 5}]}"#).starts_with("methodConfig[0].timeout: invalid type"));
    assert!(parse_err("not json").starts_with("$: expected"));
}

#[test]
fn json_durations_follow_the_protobuf_mapping() {
    assert_eq!(duration("1s"), Some(Duration::from_secs(1)));
    assert_eq!(duration("0.000000001s"), Some(Duration::from_nanos(1)));
    assert_eq!(duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(duration("315576000000s"), Some(Duration::from_secs(315_576_000_000)), "protobuf's largest");
    for bad in ["1", "1ms", ".5s", "1.s", "-1s", "1.0000000001s", "s", "1e3s", "315576000001s", "18446744073709551615s"]
    {
        assert_eq!(duration(bad), None, "{bad}");
    }
}

#[test]
fn ok_is_never_a_retryable_or_non_fatal_status() {
    // grpc-java's service config parser: "retryableStatusCodes must not contain OK" (and nonFatalStatusCodes):
    // a Trailers-Only OK (a stream that sends nothing) would be run again.
    let retry = r#"{"methodConfig": [{"name": [{"service": "a.B"}], "retryPolicy": {"maxAttempts": 2,
        "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 0]}}]}"#;
    assert_eq!(parse_err(retry), "methodConfig[0].retryPolicy.retryableStatusCodes[1]: must not be OK");
    let hedge =
        r#"{"methodConfig": [{"name": [{}], "hedgingPolicy": {"maxAttempts": 2, "nonFatalStatusCodes": ["OK"]}}]}"#;
    assert_eq!(parse_err(hedge), "methodConfig[0].hedgingPolicy.nonFatalStatusCodes[0]: must not be OK");
}
