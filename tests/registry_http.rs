//! Malformed requests to the registry API get AWS's error shapes with HTTP 400, never a crash,
//! and change nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Server;
use serde_json::Value;

/// Sends one raw HTTP/1.1 request and returns (status, body as JSON).
fn post(server: &Server, target: Option<&str>, body: &[u8]) -> (u16, Value) {
    let mut head = format!(
        "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n",
        server.api,
        body.len()
    );
    if let Some(t) = target {
        head.push_str(&format!("X-Amz-Target: {t}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(server.api).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (and close) before reading an oversize body; that is fine.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let json =
        text.split("\r\n\r\n").nth(1).and_then(|b| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    (status, json)
}

fn target(op: &str) -> String {
    format!("Route53AutoNaming_v20170314.{op}")
}

fn namespace_count(server: &Server) -> usize {
    let (status, body) = post(server, Some(&target("ListNamespaces")), b"{}");
    assert_eq!(status, 200, "{body}");
    body["Namespaces"].as_array().unwrap().len()
}

#[test]
fn bad_requests_get_aws_error_shapes() {
    let server = Server::start(&[]);
    let create = target("CreateHttpNamespace");
    let cases: Vec<(Option<String>, Vec<u8>, &str, &str)> = vec![
        (Some(create.clone()), b"not json".to_vec(), "SerializationException", "JSON"),
        (Some(create.clone()), b"[1,2]".to_vec(), "SerializationException", "object"),
        (Some(create.clone()), b"".to_vec(), "SerializationException", "JSON"),
        (Some(create.clone()), br#"{"Name": 42}"#.to_vec(), "SerializationException", "Name"),
        (Some(create.clone()), br#"{"Description": "no name"}"#.to_vec(), "InvalidInput", "Name"),
        (
            Some(target("RegisterInstance")),
            br#"{"ServiceId": "srv-x", "InstanceId": "i"}"#.to_vec(),
            "InvalidInput",
            "Attributes",
        ),
        (
            Some(target("CreatePrivateDnsNamespace")),
            br#"{"Name": "a.internal"}"#.to_vec(),
            "InvalidInput",
            "Vpc",
        ),
        (
            Some(target("DiscoverInstances")),
            br#"{"NamespaceName": "x"}"#.to_vec(),
            "InvalidInput",
            "ServiceName",
        ),
        (
            Some(target("ListNamespaces")),
            br#"{"MaxResults": "ten"}"#.to_vec(),
            "SerializationException",
            "MaxResults",
        ),
        (
            Some(target("DiscoverInstances")),
            br#"{"NamespaceName": "x", "ServiceName": "y", "HealthStatus": "GREEN"}"#.to_vec(),
            "InvalidInput",
            "HealthStatus",
        ),
        (Some(target("Explode")), b"{}".to_vec(), "UnknownOperationException", "Explode"),
        (
            Some("SomethingElse.CreateHttpNamespace".into()),
            b"{}".to_vec(),
            "UnknownOperationException",
            "X-Amz-Target",
        ),
        (None, b"{}".to_vec(), "UnknownOperationException", "X-Amz-Target"),
    ];
    for (t, body, expected, needle) in cases {
        let (status, json) = post(&server, t.as_deref(), &body);
        assert_eq!(status, 400, "{t:?} {:?}: {json}", String::from_utf8_lossy(&body));
        assert_eq!(json["__type"], expected, "{t:?}: {json}");
        let msg = json["Message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{t:?}: message {msg:?} should mention {needle}");
    }

    // An oversize body is refused whole.
    let big = format!(r#"{{"Name": "big", "Description": "{}"}}"#, "x".repeat(300 * 1024));
    let (status, json) = post(&server, Some(&create), big.as_bytes());
    assert_eq!(status, 400);
    assert_eq!(json["__type"], "InvalidInput");

    // Non-POST methods are refused too.
    let mut stream = TcpStream::connect(server.api).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");

    assert_eq!(namespace_count(&server), 0, "no bad request changed anything");
    // Garbage on the socket does not take the server down.
    let mut stream = TcpStream::connect(server.api).unwrap();
    let _ = stream.write_all(&[0xff, 0x00, 0x13, 0x37, b'\r', b'\n', b'\r', b'\n']);
    drop(stream);
    let (status, _) = post(&server, Some(&create), br#"{"Name": "still-here"}"#);
    assert_eq!(status, 200);
    assert_eq!(namespace_count(&server), 1);
}
