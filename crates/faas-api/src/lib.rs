//! Wire types of the faas HTTP API. Everything a client sends or receives is defined
//! here, so the gateway, the CLI, the benchmarks and the tests share one contract.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What to run: a string for `/bin/sh -c`, or an argv array run as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

/// How a call is served. Only `ephemeral` exists so far; the others answer 501.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Ephemeral,
    Cached,
    Checkpointed,
    Branched,
    Persistent,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ephemeral => "ephemeral",
            Mode::Cached => "cached",
            Mode::Checkpointed => "checkpointed",
            Mode::Branched => "branched",
            Mode::Persistent => "persistent",
        }
    }
}

/// `POST /api/v1/execute`. Exactly one of `command` or `code` (+ `language`).
/// Limits left out take the server's defaults; limits above the server's maximums are refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// CPU cores, fractional (0.5 = half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
    #[serde(default)]
    pub network: bool,
    #[serde(default)]
    pub mode: Mode,
    /// Cached mode: keep the sandbox warm for the next call with the same key instead of
    /// a fresh one per call (the caller accepts state shared between its calls).
    #[serde(default)]
    pub reuse: bool,
    /// Names the warm sandbox `reuse` keeps (default: one per image and limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse_key: Option<String>,
    /// Run `code` in this language context (see `POST /api/v1/contexts`); in the
    /// checkpointed and branched modes, a context of the snapshot (ids are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
    /// Checkpointed mode: snapshot the state the run leaves (its `snapshot_id` comes back).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checkpoint_after: bool,
    /// Checkpointed mode: run in a copy of this snapshot's state instead of a fresh one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Branched mode: the snapshot whose state each branch starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_snapshot: Option<String>,
    /// Branched mode: how many branches run the code (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// How a run ended. `running` and `lost` only appear on stored records: `lost` means the
/// server stopped while the run was in flight, so no result exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecStatus {
    Exited,
    Timeout,
    Oom,
    Signaled,
    Running,
    Lost,
}

impl ExecStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecStatus::Exited => "exited",
            ExecStatus::Timeout => "timeout",
            ExecStatus::Oom => "oom",
            ExecStatus::Signaled => "signaled",
            ExecStatus::Running => "running",
            ExecStatus::Lost => "lost",
        }
    }
}

/// Resources a run used, read from its cgroup after it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub cpu_ms: f64,
    pub peak_memory_bytes: u64,
}

/// The limits a run was given, after defaults were applied.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppliedLimits {
    pub timeout_ms: u64,
    pub memory_mb: u64,
    pub cpu: f64,
    pub pids: u32,
    pub output_bytes: u64,
}

/// The result of one run, and the stored record of it (`GET /api/v1/executions/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecutionResult {
    pub id: String,
    pub status: ExecStatus,
    /// The exit code when the program exited; null when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended the program, by name (`SIGKILL`), if any.
    pub signal: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Wall time from the sandbox's creation to the end of its last process.
    pub duration_ms: f64,
    pub usage: Usage,
    pub limits: AppliedLimits,
    pub mode: Mode,
    pub image: String,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Checkpointed mode with `checkpoint_after`: the snapshot of the state the run left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Branched mode: every branch's result, in order (the fields above are the first's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(no_recursion)]
    pub branches: Vec<ExecutionResult>,
}

/// Every error the API returns: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// `POST /api/v1/keys` (admin only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub role: Role,
    /// The rate-limit tier (`[rate_limits.tiers]` of the server's configuration); the
    /// default tier when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_tier: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Tenant,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Tenant => "tenant",
            Role::Admin => "admin",
        }
    }
}

/// A key as listed: never the secret itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub id: String,
    pub tenant: String,
    pub name: Option<String>,
    pub role: Role,
    pub created_at_ms: u64,
    pub revoked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_tier: Option<String>,
}

/// A tenant's quotas. As a request (`PUT /api/v1/tenants/{tenant}/quotas`, admin), a field
/// left out or null takes the server's default (`[quotas]`); as an answer, every field is
/// the limit in force. 0 means no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Sandboxes running at once: executions in progress and running instances (429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_sandboxes: Option<u64>,
    /// Instances held, in any state but deleted (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u64>,
    /// The memory limits of running sandboxes added up, in MiB (429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u64>,
    /// Stored snapshot data (compressed chunks), in MiB (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_snapshot_storage_mb: Option<u64>,
    /// Spend in the calendar month (UTC), in micro-units, after discounts (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_spend_cap_micros: Option<u64>,
}

/// `GET /api/v1/quotas` and the tenants' quota routes: the limits in force, the admin's
/// overrides, and what the tenant uses of each now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuotaStatus {
    pub tenant: String,
    pub quotas: Quotas,
    pub overrides: Quotas,
    pub in_use: QuotaUse,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuotaUse {
    pub concurrent_sandboxes: u64,
    pub instances: u64,
    pub memory_mb: u64,
    pub snapshot_storage_bytes: u64,
    pub month_spend_micros: u64,
}

/// What a group of usage records adds up to. Quantities are measured (CPU time and memory
/// from cgroups); money is integer micro-units.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageSummary {
    pub records: u64,
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    pub memory_gb_seconds: f64,
    /// The highest peak memory of any record.
    pub peak_memory_bytes: u64,
    pub storage_gb_months: f64,
    pub egress_bytes: u64,
    pub gpu_hours: f64,
    /// The price before volume discounts.
    pub list_micros: u64,
    pub discount_micros: u64,
    /// What is charged.
    pub cost_micros: u64,
}

/// `GET /api/v1/usage?from=&to=&group_by=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub tenant: String,
    /// Milliseconds since the Unix epoch; records that ended in `[from_ms, to_ms)`.
    pub from_ms: u64,
    pub to_ms: u64,
    pub group_by: Option<String>,
    pub groups: Vec<UsageGroup>,
    pub total: UsageSummary,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageGroup {
    /// The day (`2026-11-23`), mode or image.
    pub key: String,
    #[serde(flatten)]
    pub usage: UsageSummary,
}

/// `GET /api/v1/usage/current`: the calendar month so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CurrentUsage {
    pub tenant: String,
    /// `2026-11`.
    pub month: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub usage: UsageSummary,
    /// The volume discount tier the month's list spend has reached.
    pub discount_tier: DiscountTierInfo,
    pub next_tier: Option<DiscountTierInfo>,
    /// 0: no cap.
    pub spend_cap_micros: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiscountTierInfo {
    pub from_micros: u64,
    pub percent: u64,
}

/// `GET /api/v1/usage/records`: single charges in the order they were made (the order
/// volume discounts were applied in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageRecordList {
    pub records: Vec<UsageRecordInfo>,
    /// More records match than were returned: ask again with `after` = the last one's id.
    pub truncated: bool,
}

/// One charge: an execution, a period of an instance's life, or a period of snapshot
/// storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageRecordInfo {
    pub id: String,
    /// `execution`, `instance` or `storage`.
    pub kind: String,
    pub resource: String,
    pub mode: String,
    pub image: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub cpu_us: u64,
    pub wall_us: u64,
    pub memory_peak_bytes: u64,
    pub memory_avg_bytes: u64,
    pub memory_kib_ms: u64,
    pub storage_kib_ms: u64,
    pub egress_bytes: u64,
    pub gpu_ms: u64,
    pub list_micros: u64,
    pub cost_micros: u64,
}

/// The answer to `POST /api/v1/keys`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedKey {
    pub key: String,
    #[serde(flatten)]
    pub info: KeyInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub cgroup: String,
    pub running_sandboxes: u64,
    /// Times the sandbox launcher died and was replaced since the server started.
    pub launcher_restarts: u64,
}

/// `POST /api/v1/prewarm`: fill the caller's pool for an image and limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrewarmRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

/// One warm pool, as `GET /api/v1/pools` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolInfo {
    pub tenant: String,
    pub image: String,
    pub memory_mb: u64,
    pub cpu: f64,
    pub pids: u32,
    /// Set for pools that keep one reused sandbox (`reuse: true`).
    pub reuse_key: Option<String>,
    pub idle: u32,
    pub target: u32,
    pub hits: u64,
    pub misses: u64,
    pub refills: u64,
    /// Mean time to start one pooled sandbox, in milliseconds.
    pub refill_ms_mean: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolList {
    pub pools: Vec<PoolInfo>,
}

/// `POST /api/v1/contexts`: a language interpreter that keeps its globals between calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContextRequest {
    pub language: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContextInfo {
    pub id: String,
    pub language: String,
    pub image: String,
    pub created_at_ms: u64,
    pub runs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContextList {
    pub contexts: Vec<ContextInfo>,
}

/// What a stream (WebSocket or Server-Sent Events) carries from the server: output as it
/// is produced, then the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StreamEvent {
    Stdout { data: String },
    Stderr { data: String },
    Exit(Box<ExecutionResult>),
    Error { error: ErrorDetail },
}

/// What a WebSocket client sends after its first message (the execute request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StreamInput {
    Stdin { data: String },
    CloseStdin,
}

/// Lifecycle of a persistent instance. Allowed moves: creating -> running | failed;
/// running -> stopping -> stopped; stopped | failed -> running (start); any -> deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    Creating,
    Running,
    Stopping,
    Stopped,
    Failed,
    Deleted,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Creating => "creating",
            InstanceStatus::Running => "running",
            InstanceStatus::Stopping => "stopping",
            InstanceStatus::Stopped => "stopped",
            InstanceStatus::Failed => "failed",
            InstanceStatus::Deleted => "deleted",
        }
    }
}

/// What happens when an instance's TTL or idle timeout fires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TimeoutAction {
    #[default]
    Stop,
    Delete,
}

/// `POST /api/v1/instances`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstanceRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
    /// Size of the instance's writable layer (its files), in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    #[serde(default)]
    pub network: bool,
    /// Seconds from creation until `on_timeout` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Seconds without an exec or file operation until `on_timeout` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u64>,
    #[serde(default)]
    pub on_timeout: TimeoutAction,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The limits an instance runs under.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceLimits {
    pub memory_mb: u64,
    pub cpu: f64,
    pub pids: u32,
    pub disk_mb: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    pub id: String,
    pub status: InstanceStatus,
    pub image: String,
    pub limits: InstanceLimits,
    pub env: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    pub ttl_seconds: Option<u64>,
    pub idle_timeout_seconds: Option<u64>,
    pub on_timeout: TimeoutAction,
    pub created_at_ms: u64,
    /// When it last started running.
    pub started_at_ms: Option<u64>,
    /// The last exec or file operation.
    pub last_activity_ms: u64,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// The snapshot it was restored (or branched) from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceList {
    pub instances: Vec<Instance>,
}

/// `POST /api/v1/instances/{id}/exec`: like an execute request (no mode, image or limits:
/// the instance has them), plus `background`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceExecRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Return at once with a process id instead of waiting for the result.
    #[serde(default)]
    pub background: bool,
    /// Run `code` in this context of the instance (see `POST .../contexts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
}

/// `POST /api/v1/instances/{id}/contexts`: an interpreter inside the instance that keeps
/// its globals between runs, and in snapshots, restores and branches of the instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceContextRequest {
    pub language: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// One entry of `GET /api/v1/instances/{id}/files/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileEntry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    pub modified_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileList {
    pub path: String,
    pub entries: Vec<FileEntry>,
}

/// `GET /api/v1/instances/{id}/ssh`: how to log in, with a key pair issued just now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SshAccess {
    pub host: String,
    pub port: u16,
    /// The instance id: the key opens this instance only.
    pub user: String,
    /// The key's id, to revoke it alone.
    pub key_id: String,
    /// OpenSSH private key; shown once, never stored by the server.
    pub private_key: String,
    pub public_key: String,
    /// `SHA256:...` of the server's host key, to check on first connection.
    pub host_key_fingerprint: String,
    /// The host key itself (`ssh-ed25519 AAAA...`), for a known_hosts line.
    pub host_public_key: String,
    /// A ready command line, the private key saved as `instance_key`.
    pub command: String,
}

/// `POST /api/v1/instances/{id}/public-ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExposePortRequest {
    pub port: u16,
}

/// A port reachable without an API key, at `url` (the token is part of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublicPort {
    pub port: u16,
    /// Given only when the port is exposed; the server keeps only its hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub created_at_ms: u64,
}

/// A background process of an instance (`exec` with `background: true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessInfo {
    pub id: String,
    pub argv: Vec<String>,
    /// `running` until it ends; then `result` holds how.
    pub status: String,
    pub started_at_ms: u64,
    pub result: Option<ExecutionResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessList {
    pub processes: Vec<ProcessInfo>,
}

/// `POST /api/v1/instances/{id}/processes/{pid}/kill`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KillRequest {
    /// A signal name (`SIGTERM`) or number; SIGKILL when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<serde_json::Value>,
}

/// `POST /api/v1/snapshots`: capture a running instance's processes and files (or a
/// stopped instance's files).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    pub instance_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Stop the instance once it is captured (it keeps running by default).
    #[serde(default)]
    pub stop: bool,
}

/// What a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// Processes (memory, open files, sockets) and files: a restore continues where the
    /// instance was.
    Memory,
    /// Files only (the instance was not running): a restore boots on them.
    Filesystem,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub id: String,
    pub name: Option<String>,
    pub kind: SnapshotKind,
    /// The instance it was taken from.
    pub instance_id: String,
    /// The snapshot that instance came from, if any: the lineage.
    pub parent_id: Option<String>,
    pub image: String,
    pub limits: InstanceLimits,
    pub metadata: BTreeMap<String, String>,
    /// Bytes of data: process images and the disk image's data (holes left out).
    pub size_bytes: u64,
    /// Compressed bytes this snapshot added to the deduplicated blob store (what it costs
    /// to keep beyond the chunks it shares); null until it is packed, moments after it is
    /// taken.
    #[serde(default)]
    pub stored_bytes: Option<u64>,
    /// How long the capture held the instance still.
    pub capture_ms: f64,
    pub created_at_ms: u64,
    /// For a merge: the instances whose changes it applies to its parent's files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
    /// Set on deleted snapshots, which appear only in lineage trees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at_ms: Option<u64>,
}

/// `POST /api/v1/branches/merge`: a new (filesystem) snapshot with the base snapshot's
/// files and the instances' changes to them; conflicting changes are refused (409, the
/// paths named) and nothing is written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    pub base_snapshot_id: String,
    pub instance_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Modified,
    Removed,
}

/// One path a merge took from an instance (paths of the writable layer: an overlay
/// whiteout is how a removal of an image file looks there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MergedChange {
    pub path: String,
    pub instance_id: String,
    pub change: ChangeKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MergeResult {
    pub snapshot: Snapshot,
    pub changes: Vec<MergedChange>,
}

/// `GET /api/v1/snapshots/{id}/tree`: a snapshot, the instances restored (or branched)
/// from it, and the snapshots taken of those, recursively.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotTree {
    pub snapshot: Snapshot,
    pub instances: Vec<TreeInstance>,
    #[schema(no_recursion)]
    pub children: Vec<SnapshotTree>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TreeInstance {
    pub id: String,
    pub status: InstanceStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<Snapshot>,
}

/// `POST /api/v1/snapshots/{id}/restore` (the body is optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreSnapshotRequest {
    /// The new instance's metadata (default: the snapshot's instance's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// `POST /api/v1/branches`: `count` new instances from one state: a snapshot, or a
/// running instance (snapshotted first).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BranchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BranchResponse {
    pub snapshot_id: String,
    pub instances: Vec<Instance>,
}
