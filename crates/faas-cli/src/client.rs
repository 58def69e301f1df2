//! The CLI's HTTP client. Reads `FAAS_URL` (default http://127.0.0.1:8080) and
//! `FAAS_API_KEY`; on the server's own machine, the generated admin key file serves when
//! no key is set.

use anyhow::{Context, anyhow};
use faas_api::ErrorBody;
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    pub fn from_env() -> anyhow::Result<Self> {
        let base = std::env::var("FAAS_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
        let key = match std::env::var("FAAS_API_KEY") {
            Ok(key) if !key.is_empty() => key,
            _ => {
                let dir = std::env::var("FAAS_DATA_DIR").unwrap_or_else(|_| "/var/lib/faas".into());
                let path = std::path::Path::new(&dir).join("admin.key");
                std::fs::read_to_string(&path).map(|k| k.trim().to_owned()).with_context(|| {
                    format!("no FAAS_API_KEY set, and {} is not readable", path.display())
                })?
            }
        };
        Ok(Self { base: base.trim_end_matches('/').to_owned(), key, http: reqwest::Client::new() })
    }

    /// Sends a request and returns the JSON answer (Null for 204); API errors become
    /// `code: message (HTTP status)`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.key);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the faas server at {}", self.base))?;
        let status = resp.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        if !status.is_success() {
            return Err(api_error(resp).await);
        }
        let text = resp.text().await.context("reading the server's answer")?;
        serde_json::from_str(&text).context("the server's answer is not JSON")
    }

    /// Sends `body` (a byte stream) with `method` and returns the JSON answer.
    pub async fn send_body(
        &self,
        method: Method,
        path: &str,
        body: reqwest::Body,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .request(method, &url)
            .bearer_auth(&self.key)
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the faas server at {}", self.base))?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        resp.json().await.context("the server's answer is not JSON")
    }

    /// GETs `path` and returns the response to read its body as a stream.
    pub async fn download(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach the faas server at {}", self.base))?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        Ok(resp)
    }
}

/// A failed answer as `code: message (HTTP status)`.
async fn api_error(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(err) => anyhow!("{}: {} (HTTP {})", err.error.code, err.error.message, status.as_u16()),
        Err(_) => anyhow!("HTTP {}: {text}", status.as_u16()),
    }
}

impl Client {
    /// POSTs to a Server-Sent Events route and calls `on_event(name, data)` for each event
    /// as it arrives.
    pub async fn stream(
        &self,
        path: &str,
        body: &Value,
        mut on_event: impl FnMut(&str, &str),
    ) -> anyhow::Result<()> {
        let url = format!("{}{path}", self.base);
        let mut resp = self
            .http
            .post(&url)
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the faas server at {}", self.base))?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        let mut pending = String::new();
        let (mut event, mut data) = (String::new(), String::new());
        while let Some(chunk) = resp.chunk().await.context("reading the stream")? {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if !data.is_empty() {
                        on_event(&event, &data);
                    }
                    event.clear();
                    data.clear();
                } else if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
        }
        Ok(())
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}
