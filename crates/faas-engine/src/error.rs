use thiserror::Error;

/// Everything the engine can answer besides a result. The gateway maps each variant to one
/// HTTP status, in one place.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The request is well-formed but a value is not acceptable (422).
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The thing asked for does not exist, or belongs to another tenant (404).
    #[error("{kind} '{id}' not found")]
    NotFound { kind: &'static str, id: String },
    /// This host or build cannot do it (501); `why` says what is missing.
    #[error("{what} is not available: {why}")]
    Unsupported { what: String, why: String },
    /// The resource is in a state that does not allow this now (409).
    #[error("{message}")]
    Conflict { message: String },
    /// Not allowed on this path or resource (403).
    #[error("{message}")]
    Forbidden { message: String },
    /// The instance's disk is full (507).
    #[error("{message}")]
    DiskFull { message: String },
    /// The instance's program behind a proxied port did not answer (502).
    #[error("{message}")]
    BadGateway { message: String },
    /// A tenant's quota would be exceeded: 429 when it frees itself (sandboxes or memory in
    /// use), 403 when the tenant must act (instances, storage, spend).
    #[error("{message}")]
    QuotaExceeded { quota: &'static str, transient: bool, message: String },
    /// Too many sandboxes are running (503).
    #[error("the server is at its limit of {limit} concurrent sandboxes")]
    Overloaded { limit: usize },
    #[error("sandbox failure")]
    Sandbox(#[from] faas_sandbox::RunError),
    #[error("store failure")]
    Store(#[from] faas_store::StoreError),
    /// A file operation of the server's own failed (500).
    #[error("failed {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("startup failed while {what}")]
    Startup {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// An error and its sources, one line, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
