//! The client's error: what the server refused (with its code and request id), or why the
//! server could not be asked.

use std::time::Duration;

use keyward_core::api::ErrorEnvelope;

/// Why a call failed. No variant holds a token or key: messages come from the server's error
/// envelope (which never echoes secrets) or name the server's address only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The server answered with an error.
    Api {
        /// The HTTP status.
        status: u16,
        /// The API's error code (`NOT_FOUND`, `BAD_REQUEST`, ...), or `HTTP_<status>`
        /// when the answer was not keyward's error envelope (a proxy's page, say).
        code: String,
        message: String,
        /// The request's id, to find the call in the server's log.
        request_id: Option<String>,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The server could not be reached (refused, unreachable, TLS failed).
    Unreachable(String),
    /// An attempt took longer than the client's timeout.
    Timeout(String),
    /// The answer was not what the API promises.
    Decode(String),
    /// The client was used wrongly (a malformed server address).
    Usage(String),
}

impl Error {
    /// The API's error code, for [`Error::Api`].
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, for [`Error::Api`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) async fn from_answer(res: reqwest::Response) -> Error {
        let status = res.status().as_u16();
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let header_id = header("x-request-id");
        // A bounded read: an error body is small; a proxy's page is not worth more.
        let mut res = res;
        let mut bytes = Vec::new();
        while let Ok(Some(chunk)) = res.chunk().await {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > 64 * 1024 {
                break;
            }
        }
        match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
            Ok(env) => Error::Api {
                status,
                code: env.error.code,
                message: env.error.message,
                request_id: env.error.request_id.or(header_id),
                retry_after,
            },
            Err(_) => Error::Api {
                status,
                code: format!("HTTP_{status}"),
                message: format!("the server answered HTTP {status} without keyward's error body"),
                request_id: header_id,
                retry_after,
            },
        }
    }

    /// A transport failure, named by the server's address only (reqwest's own message may
    /// carry the whole URL).
    pub(crate) fn transport(base: &str, e: &reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::Timeout(format!("{base}: no answer within the client's timeout"))
        } else if e.is_connect() {
            Error::Unreachable(format!("{base}: connection refused or host unreachable"))
        } else if e.is_decode() || e.is_body() {
            Error::Decode(format!("{base}: the answer could not be read"))
        } else {
            Error::Unreachable(format!("{base}: the request failed"))
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Api {
                status,
                code,
                message,
                request_id,
                ..
            } => {
                write!(f, "{code} ({status}): {message}")?;
                if let Some(id) = request_id {
                    write!(f, " [request {id}]")?;
                }
                Ok(())
            }
            Error::Unreachable(m) => write!(f, "cannot reach the keyward server: {m}"),
            Error::Timeout(m) => write!(f, "timed out: {m}"),
            Error::Decode(m) => write!(f, "unexpected answer: {m}"),
            Error::Usage(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}
