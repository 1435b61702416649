//! Where the control plane's [`Error`] becomes HTTP: the status of each [`ErrorCode`], the JSON
//! envelope `{"error": {"code", "message", "request_id"}}` and `Retry-After`. The request id of
//! the request being served is a task-local set by the request-id middleware, so every error
//! body can carry it.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::{Error, ErrorCode};

tokio::task_local! {
    /// The request id of the request being served (set by the request-id middleware).
    pub(crate) static REQUEST_ID: String;
}

pub(crate) fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// The HTTP status of each code (the table of the API contract's errors).
pub(crate) fn status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::PolicyViolation => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::RateLimited | ErrorCode::UsageExceeded => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The JSON body of an error, also used by forward-auth denials.
pub(crate) fn error_body(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {"code": code, "message": message, "request_id": current_request_id()}})
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut res = (
            status(self.code),
            axum::Json(error_body(self.code.as_str(), &self.message)),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        res
    }
}

/// An error answered before the request body was read: the connection is not reused
/// (`Connection: close`), since the unread body would be taken for the next request.
pub(crate) struct Refusal(pub Error);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut res = self.0.into_response();
        res.headers_mut()
            .insert("connection", HeaderValue::from_static("close"));
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_the_status_of_the_contract() {
        assert_eq!(status(ErrorCode::PolicyViolation).as_u16(), 422);
        assert_eq!(status(ErrorCode::UsageExceeded).as_u16(), 429);
        for c in [ErrorCode::Internal, ErrorCode::Unavailable] {
            assert!(!c.is_request_error() && status(c).is_server_error());
        }
        for c in [
            ErrorCode::BadRequest,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
        ] {
            assert!(c.is_request_error() && status(c).is_client_error());
        }
    }
}
