//! Spans for OpenTelemetry traces: one per request (continuing the caller's W3C `traceparent`),
//! one per webhook attempt, one per background run. They are opened under the target
//! [`TARGET`], which only the binary's trace exporter listens to (`OTEL_EXPORTER_OTLP_ENDPOINT`);
//! without it each costs one disabled-callsite check. Spans carry no secret and no query string:
//! a route, a method, a status, ids.

use axum::http::HeaderMap;
use tracing::Span;

/// The target of every span meant for traces.
pub const TARGET: &str = "keyward::trace";

/// The span of one HTTP request (`GET /v1/keys/{id}`), a child of the caller's trace context
/// when the request carries one. Its status is filled in by [`finish_request`].
pub(crate) fn request(method: &str, route: &str, headers: &HeaderMap, request_id: &str) -> Span {
    // Any token is a method to hyper: names outside the standard ones are `_OTHER` (as the
    // semantic conventions say), so clients cannot multiply span names.
    let method = match method {
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE" | "PATCH" => {
            method
        }
        _ => "_OTHER",
    };
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        keyward.request_id = %request_id,
    );
    if !span.is_disabled() {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let parent =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
        let _ = span.set_parent(parent);
    }
    span
}

/// Records the answer's status on a request span (server errors mark the span as failed).
pub(crate) fn finish_request(span: &Span, status: u16) {
    if span.is_disabled() {
        return;
    }
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
}

/// The span of one webhook delivery attempt (an outgoing call), filled in by [`finish_attempt`].
pub(crate) fn webhook_attempt(webhook_id: &str, event_id: &str, kind: &str, attempt: i64) -> Span {
    tracing::info_span!(
        target: TARGET,
        "webhook",
        otel.name = %format_args!("webhook {kind}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        keyward.webhook_id = %webhook_id,
        keyward.event_id = %event_id,
        keyward.event = %kind,
        keyward.attempt = attempt,
        http.request.method = "POST",
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// Records an attempt's outcome: the receiver's status, or why there was none.
pub(crate) fn finish_attempt(span: &Span, status: Option<i64>, error: Option<&str>) {
    if span.is_disabled() {
        return;
    }
    if let Some(code) = status {
        span.record("http.response.status_code", code);
    }
    if let Some(e) = error {
        span.record("error.type", e);
        span.record("otel.status_code", "error");
    }
}

/// The span of one background sweep (expiry, warnings, inactivity, roll-ups, anomalies).
pub(crate) fn sweep() -> Span {
    tracing::info_span!(target: TARGET, "sweep", otel.kind = "internal")
}

/// Reads the trace context from request headers.
struct Headers<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
