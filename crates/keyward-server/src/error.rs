//! The one error type of the server, with the stable codes of the API contract (the OpenAPI
//! document, `GET /v1/openapi.json`) on the wire.
//! A 500 logs its cause and answers a generic message; no message ever carries a secret.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_store::StoreError;

tokio::task_local! {
    /// The request id of the request being served (set by the request-id middleware), so that
    /// every error body can carry it.
    pub static REQUEST_ID: String;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    PolicyViolation,
    RateLimited,
    UsageExceeded,
    Internal,
    Unavailable,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "BAD_REQUEST",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Forbidden => "FORBIDDEN",
            Code::NotFound => "NOT_FOUND",
            Code::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Code::Conflict => "CONFLICT",
            Code::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Code::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Code::PolicyViolation => "POLICY_VIOLATION",
            Code::RateLimited => "RATE_LIMITED",
            Code::UsageExceeded => "USAGE_EXCEEDED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
        }
    }
    pub fn status(self) -> StatusCode {
        match self {
            Code::BadRequest => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::Conflict => StatusCode::CONFLICT,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::PolicyViolation => StatusCode::UNPROCESSABLE_ENTITY,
            Code::RateLimited | Code::UsageExceeded => StatusCode::TOO_MANY_REQUESTS,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Error {
    pub code: Code,
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<i64>,
    /// Extra response headers (forward-auth denials carry the key id).
    pub headers: Vec<(&'static str, String)>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            retry_after: None,
            headers: Vec::new(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(Code::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(Code::Conflict, m)
    }
    pub fn policy(m: impl Into<String>) -> Self {
        Self::new(Code::PolicyViolation, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, m)
    }
    pub fn unauthenticated(m: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, m)
    }
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            Code::Internal,
            "internal error; see the server log for the request id",
        )
    }
    pub fn with_retry_after(mut self, secs: i64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable");
                Error::new(Code::Unavailable, "the store cannot be reached")
            }
            StoreError::Conflict(c) => {
                Error::conflict(format!("conflicts with an existing object ({c})"))
            }
            StoreError::Other(cause) => Error::internal(cause),
        }
    }
}

pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// The JSON body of an error, also used by forward-auth denials.
pub fn error_body(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {"code": code, "message": message, "request_id": current_request_id()}})
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut res = (
            self.code.status(),
            axum::Json(error_body(self.code.as_str(), &self.message)),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                res.headers_mut().insert(name, v);
            }
        }
        res
    }
}
