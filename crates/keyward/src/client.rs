//! A small typed client of the HTTP API, used by the CLI commands.

use serde_json::Value;

#[derive(Debug)]
pub enum ClientError {
    /// The server could not be reached.
    Unreachable(String),
    /// The server answered with an error envelope.
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The command was used wrongly.
    Usage(String),
    /// Anything else (an unreadable answer).
    Other(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable(m) => write!(f, "cannot reach the keyward server: {m}"),
            ClientError::Api {
                status,
                code,
                message,
            } => {
                let hint = match *status {
                    401 => " (check KEYWARD_TOKEN)",
                    _ => "",
                };
                write!(f, "{code} ({status}): {message}{hint}")
            }
            ClientError::Usage(m) | ClientError::Other(m) => f.write_str(m),
        }
    }
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: Option<&str>) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Other(e.to_string()))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
            http,
        })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let res = r.send().await.map_err(|e| {
            // reqwest's message names the URL only (never headers), so no token can leak here.
            ClientError::Unreachable(format!("{} ({})", self.base, short(&e)))
        })?;
        let status = res.status().as_u16();
        let text = res
            .text()
            .await
            .map_err(|e| ClientError::Other(e.to_string()))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let code = v["error"]["code"]
            .as_str()
            .unwrap_or("HTTP_ERROR")
            .to_string();
        let message = v["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP status {status}"));
        Err(ClientError::Api {
            status,
            code,
            message,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn get_query(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Value, ClientError> {
        self.send(self.req(reqwest::Method::GET, path).query(query))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(self.req(reqwest::Method::POST, path).json(body))
            .await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(self.req(reqwest::Method::PATCH, path).json(body))
            .await
    }
}

fn short(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "connection refused or host unreachable".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        "request failed".into()
    }
}
