//! OpenTelemetry traces over OTLP/HTTP (protobuf), on only when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and off again
//! with `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
//!
//! The server opens its spans under the target `keyward::trace` (one per request, per webhook
//! attempt and per background run); only the exporter's layer takes that target, so the log
//! lines do not change and, with tracing off, those spans cost one disabled-callsite check. The
//! rest of the standard variables are read by the OpenTelemetry SDK itself: headers
//! (`OTEL_EXPORTER_OTLP_HEADERS`), timeout, sampler (`OTEL_TRACES_SAMPLER`, `_ARG`), batch
//! settings (`OTEL_BSP_*`) and resource (`OTEL_SERVICE_NAME`, default `keyward`;
//! `OTEL_RESOURCE_ATTRIBUTES`).

use opentelemetry_sdk::trace::SdkTracerProvider;

/// The target of the spans exported as traces.
pub use keyward_server::traces::TARGET;

/// Whether the environment asks for traces; an error names a setting keyward cannot honour.
fn wanted() -> Result<bool, String> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(false);
    }
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    match std::env::var("OTEL_TRACES_EXPORTER")
        .as_deref()
        .map(str::trim)
    {
        Err(_) | Ok("" | "otlp") => {}
        Ok("none") => return Ok(false),
        Ok(other) => {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={other:?} is not supported (otlp or none)"
            ))
        }
    }
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match protocol.as_deref().map(str::trim) {
        Err(_) | Ok("" | "http/protobuf") => Ok(true),
        Ok(other) => Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported: keyward exports traces \
             over OTLP/HTTP with protobuf (http/protobuf, usually port 4318)"
        )),
    }
}

/// The tracer provider when the environment asks for traces (its spans are exported in
/// batches from a thread of its own), or `None`.
pub fn provider() -> Result<Option<SdkTracerProvider>, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::Resource;
    if !wanted()? {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| format!("cannot set up the OTLP trace exporter: {e}"))?;
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("keyward");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    // Incoming `traceparent` headers are read with the W3C propagator.
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

/// Exports what is still buffered and stops the exporter (at the end of `serve`); blocks for at
/// most a few seconds.
pub fn shutdown(provider: SdkTracerProvider) {
    if let Err(e) = provider.shutdown_with_timeout(std::time::Duration::from_secs(5)) {
        tracing::warn!(error = %e, "traces: the last spans could not be exported");
    }
}
