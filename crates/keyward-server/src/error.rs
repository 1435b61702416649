//! The control plane's error: a stable code (the wire codes of the API contract, in the
//! OpenAPI document) and a message that never carries a secret. It says nothing about HTTP: the
//! front ends map it, the API in [`crate::http::error`] (status codes, the JSON envelope) and the
//! dashboard to its error pages. An internal error logs its cause and answers a generic message.

use keyward_store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    RequestTimeout,
    PayloadTooLarge,
    UnsupportedMediaType,
    PolicyViolation,
    RateLimited,
    UsageExceeded,
    Internal,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::RequestTimeout => "REQUEST_TIMEOUT",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ErrorCode::PolicyViolation => "POLICY_VIOLATION",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::UsageExceeded => "USAGE_EXCEEDED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
    /// Whether the request itself was at fault (a 4xx on the API): the caller can correct it.
    pub fn is_request_error(self) -> bool {
        !matches!(self, ErrorCode::Internal | ErrorCode::Unavailable)
    }
}

#[derive(Debug, Clone)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// When trying again makes sense: whole seconds to wait (throttled authentication).
    pub(crate) retry_after: Option<i64>,
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub(crate) fn bad_request(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, m)
    }
    pub(crate) fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, m)
    }
    pub(crate) fn conflict(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, m)
    }
    pub(crate) fn policy(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::PolicyViolation, m)
    }
    pub(crate) fn forbidden(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, m)
    }
    pub(crate) fn unauthenticated(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, m)
    }
    pub(crate) fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            ErrorCode::Internal,
            "internal error; see the server log for the request id",
        )
    }
    pub(crate) fn with_retry_after(mut self, secs: i64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable");
                Error::new(ErrorCode::Unavailable, "the store cannot be reached")
            }
            StoreError::Conflict(c) => {
                Error::conflict(format!("conflicts with an existing object ({c})"))
            }
            StoreError::Other(cause) => Error::internal(cause),
        }
    }
}
