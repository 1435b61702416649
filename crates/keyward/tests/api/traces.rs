//! OpenTelemetry traces: `keyward serve` with `OTEL_EXPORTER_OTLP_ENDPOINT` exports spans over
//! OTLP/HTTP (protobuf) to a receiver run here, continuing a caller's `traceparent`, with no
//! secret in what it sends; an OTLP protocol it cannot speak stops the start with the reason.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::json;

use crate::helpers::TempDir;
use crate::secrets::{admin_token, post_json, start_with, stop};

const BIN: &str = env!("CARGO_BIN_EXE_keyward");

/// An OTLP/HTTP receiver on port 0: what was posted to `/v1/traces`, raw.
async fn receiver() -> (String, Arc<Mutex<Vec<Bytes>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                sink.lock().unwrap().push(body);
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Any> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_continuing_the_callers_trace() {
    let (endpoint, got) = receiver().await;
    let dir = TempDir::new();
    let db = format!("sqlite://{}", dir.0.join("k.db").display());
    let token = admin_token(&db);
    let p = start_with(
        &db,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let http = reqwest::Client::new();
    let ks = post_json(
        &http,
        &p.url,
        &token,
        "/v1/keyspaces",
        json!({"name": "t", "prefix": "tr"}),
    )
    .await;
    // The caller's trace: the create's span must be its child.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let created = http
        .post(format!("{}/v1/keys", p.url))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
        .json(&json!({"keyspace_id": ks["id"], "name": "k", "owner": "o"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let r = http
        .post(format!("{}/v1/verify", p.url))
        .json(&json!({"key": key}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{}/v1/keys/key_nope", p.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A graceful stop exports what is still buffered.
    let log = stop(p);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let batches = got.lock().unwrap().clone();
        let raw: Vec<u8> = batches.iter().flat_map(|b| b.to_vec()).collect();
        for secret in [&key, &token] {
            assert!(
                !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret in the exported spans"
            );
        }
        let mut spans = Vec::new();
        for b in &batches {
            let req = ExportTraceServiceRequest::decode(b.as_ref()).unwrap();
            for rs in req.resource_spans {
                let resource = rs.resource.unwrap_or_default();
                match attr(&resource.attributes, "service.name") {
                    Some(Any::StringValue(s)) => assert_eq!(s, "keyward"),
                    other => panic!("service.name {other:?}"),
                }
                for ss in rs.scope_spans {
                    spans.extend(ss.spans);
                }
            }
        }
        if spans.iter().any(|s| s.name == "GET /v1/keys/{id}") {
            break spans;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spans: {:?}\nlog: {log}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let create = spans
        .iter()
        .find(|s| s.name == "POST /v1/keys")
        .expect("a span for the create");
    assert_eq!(
        hex(&create.trace_id),
        trace_id,
        "the caller's trace goes on"
    );
    assert_eq!(hex(&create.parent_span_id), parent_id);
    assert_eq!(create.kind, SpanKind::Server as i32);
    assert_eq!(
        attr(&create.attributes, "http.response.status_code"),
        Some(&Any::IntValue(201))
    );
    assert_eq!(
        attr(&create.attributes, "http.route"),
        Some(&Any::StringValue("/v1/keys".into()))
    );
    assert!(create.end_time_unix_nano > create.start_time_unix_nano);

    let verify = spans
        .iter()
        .find(|s| s.name == "POST /v1/verify")
        .expect("a span for the verification");
    assert_ne!(
        hex(&verify.trace_id),
        trace_id,
        "a request without a parent starts a trace"
    );
    assert!(verify.parent_span_id.is_empty());
    let missing = spans
        .iter()
        .find(|s| s.name == "GET /v1/keys/{id}")
        .unwrap();
    assert_eq!(
        attr(&missing.attributes, "http.response.status_code"),
        Some(&Any::IntValue(404))
    );
    // The log keeps its shape: trace spans do not show up in its lines.
    assert!(!log.contains("keyward.request_id"), "{log}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn an_otlp_protocol_keyward_cannot_speak_stops_the_start() {
    let dir = TempDir::new();
    let db = format!("sqlite://{}", dir.0.join("k.db").display());
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("http/protobuf"), "{err}");
}
