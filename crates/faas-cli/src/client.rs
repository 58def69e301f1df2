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
                std::fs::read_to_string(&path)
                    .map(|k| k.trim().to_owned())
                    .with_context(|| {
                        format!(
                            "no FAAS_API_KEY set, and {} is not readable",
                            path.display()
                        )
                    })?
            }
        };
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            key,
            http: reqwest::Client::new(),
        })
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
        let text = resp.text().await.context("reading the server's answer")?;
        if status.is_success() {
            return serde_json::from_str(&text).context("the server's answer is not JSON");
        }
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(err) => Err(anyhow!(
                "{}: {} (HTTP {})",
                err.error.code,
                err.error.message,
                status.as_u16()
            )),
            Err(_) => Err(anyhow!("HTTP {}: {text}", status.as_u16())),
        }
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
