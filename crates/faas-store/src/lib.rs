//! Durable state: API keys, execution records, instances and their credentials, snapshots. [`Store`] is what the engine and the
//! gateway see; [`SqliteStore`] is the embedded default. A PostgreSQL implementation for
//! clusters joins behind the same trait.

pub mod billing;
mod sqlite;

use async_trait::async_trait;
use faas_api::{ExecutionResult, Instance, Role, Snapshot};
use thiserror::Error;

pub use billing::{Metered, Pricing, UsageKind, UsageRecord};
pub use sqlite::SqliteStore;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored record {id} is unreadable")]
    Corrupt {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("database schema version {found} is newer than this binary knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("database task failed")]
    Task(#[from] tokio::task::JoinError),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// An API key as stored: the secret only as a SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub tenant: String,
    pub name: Option<String>,
    pub role: Role,
    pub hash: String,
    pub created_at_ms: u64,
    pub revoked: bool,
    /// The rate-limit tier its requests are counted under (`None`: the default tier).
    pub rate_tier: Option<String>,
}

/// How usage is grouped in a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    /// One group: the total.
    Total,
    /// By UTC day; the key is the day's number since the Unix epoch.
    Day,
    /// By mode; snapshot storage is the group `storage`.
    Mode,
    /// By image; snapshot storage is the group `snapshots`.
    Image,
}

/// Usage added up: sums of the measurements and prices of a group of records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub records: u64,
    pub cpu_us: u64,
    pub wall_us: u64,
    pub memory_kib_ms: u64,
    /// The highest peak of any record.
    pub memory_peak_bytes: u64,
    pub storage_kib_ms: u64,
    pub egress_bytes: u64,
    pub gpu_ms: u64,
    pub list_micros: u64,
    pub cost_micros: u64,
}

impl UsageTotals {
    /// Adds another group's totals to these (the peak is the higher one).
    pub fn add(&mut self, other: &UsageTotals) {
        self.records += other.records;
        self.cpu_us += other.cpu_us;
        self.wall_us += other.wall_us;
        self.memory_kib_ms += other.memory_kib_ms;
        self.memory_peak_bytes = self.memory_peak_bytes.max(other.memory_peak_bytes);
        self.storage_kib_ms += other.storage_kib_ms;
        self.egress_bytes += other.egress_bytes;
        self.gpu_ms += other.gpu_ms;
        self.list_micros += other.list_micros;
        self.cost_micros += other.cost_micros;
    }
}

/// What an instance credential opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// An SSH public key; `hash` is its SHA-256 fingerprint.
    SshKey,
    /// A public URL for one port; `hash` is the token's SHA-256.
    PortToken,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::SshKey => "ssh_key",
            CredentialKind::PortToken => "port_token",
        }
    }
}

/// A secret that opens one instance (and, for a port token, one port of it) without an
/// API key. Only its hash is stored.
/// Snapshots the packer must still pack (tenant, id), deleted ones whose pack it must
/// still release, and those packed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackWork {
    pub unpacked: Vec<(String, String)>,
    pub unreleased: Vec<String>,
    pub packed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub id: String,
    pub tenant: String,
    pub instance_id: String,
    pub kind: CredentialKind,
    pub port: Option<u16>,
    pub hash: String,
    pub created_at_ms: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn insert_key(&self, key: KeyRecord) -> Result<()>;
    async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>>;
    /// Keys of one tenant, or of all tenants with `None`.
    async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>>;
    /// Revokes a key; `false` when no such key exists (in that tenant, if given).
    async fn revoke_key(&self, id: &str, tenant: Option<&str>) -> Result<bool>;
    async fn has_admin_key(&self) -> Result<bool>;

    /// Records an execution: as it starts (status `running`), or once with its result and
    /// its charge.
    async fn insert_execution(
        &self,
        tenant: &str,
        record: &ExecutionResult,
        charge: Option<&Metered>,
    ) -> Result<()>;
    /// Replaces a record with its final result, and records its charge, in one transaction.
    async fn finish_execution(
        &self,
        record: &ExecutionResult,
        charge: Option<&Metered>,
    ) -> Result<()>;
    /// One tenant's execution; another tenant's is `None`, as if it did not exist.
    async fn execution(&self, tenant: &str, id: &str) -> Result<Option<ExecutionResult>>;
    /// Marks executions left `running` by a previous process as `lost`; returns how many.
    async fn mark_interrupted_executions(&self) -> Result<u64>;

    /// Creates or replaces an instance's record.
    async fn put_instance(&self, tenant: &str, instance: &Instance) -> Result<()> {
        self.put_instance_charged(tenant, instance, None).await
    }
    /// Creates or replaces an instance's record and records the charge of what it used up
    /// to this change, in one transaction.
    async fn put_instance_charged(
        &self,
        tenant: &str,
        instance: &Instance,
        charge: Option<&Metered>,
    ) -> Result<()>;
    /// One tenant's instance; another tenant's, or a deleted one, is `None`.
    async fn instance(&self, tenant: &str, id: &str) -> Result<Option<Instance>>;
    /// A tenant's instances (not the deleted ones), oldest first.
    async fn list_instances(&self, tenant: &str) -> Result<Vec<Instance>>;
    /// Every tenant's instances that are not deleted, with their tenant (start-up).
    async fn live_instances(&self) -> Result<Vec<(String, Instance)>>;

    /// Records a snapshot with its manifest (what a restore needs, JSON).
    async fn insert_snapshot(
        &self,
        tenant: &str,
        snapshot: &Snapshot,
        manifest: &str,
    ) -> Result<()>;
    /// One tenant's snapshot and its manifest; another tenant's, or a deleted one, is `None`.
    async fn snapshot(&self, tenant: &str, id: &str) -> Result<Option<(Snapshot, String)>>;
    /// A tenant's snapshots, oldest first; with `deleted` also the deleted ones (lineage).
    async fn list_snapshots(&self, tenant: &str, deleted: bool) -> Result<Vec<Snapshot>>;
    /// Marks a snapshot deleted (its record stays for the lineage); `false` when there is
    /// none to delete.
    async fn delete_snapshot(&self, tenant: &str, id: &str) -> Result<bool>;
    /// Records a snapshot's pack (JSON) and the chunks it holds (digest, compressed size;
    /// chunks are the tenant's), with the snapshot's updated record, in one transaction.
    async fn insert_pack(
        &self,
        tenant: &str,
        snapshot: &Snapshot,
        pack: &str,
        chunks: Vec<(String, u64)>,
    ) -> Result<()>;
    /// A snapshot's pack, once packed.
    async fn pack(&self, snapshot_id: &str) -> Result<Option<String>>;
    /// Drops a (deleted) snapshot's pack; answers the chunks no pack holds any more, which
    /// the blob store may then remove.
    async fn release_pack(&self, snapshot_id: &str) -> Result<Vec<String>>;
    /// What the packer has to do after a restart.
    async fn pack_work(&self) -> Result<PackWork>;
    /// Every chunk a pack holds.
    async fn chunk_digests(&self) -> Result<Vec<String>>;
    /// The compressed bytes of a tenant's stored chunks, each counted once.
    async fn stored_bytes(&self, tenant: &str) -> Result<u64>;
    /// The compressed bytes of every stored chunk.
    async fn total_stored_bytes(&self) -> Result<u64>;

    /// Records charges (each priced, with the discount its month's spend earns); one whose
    /// id is already recorded is ignored.
    async fn record_usage(&self, charges: Vec<Metered>) -> Result<()>;
    /// Charges every tenant's snapshot storage up to `now_ms` (storage is also charged at
    /// every change of it, in the transaction of the change).
    async fn meter_storage(&self, now_ms: u64) -> Result<()>;
    /// A tenant's charges that ended in `[from_ms, to_ms)`, in the order they were made,
    /// after the charge `after` (a cursor: the last id of the previous page), at most
    /// `limit`.
    async fn usage_records(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UsageRecord>>;
    /// A tenant's charges that ended in `[from_ms, to_ms)`, added up by group (key, totals).
    async fn usage_summary(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        group: UsageGroup,
    ) -> Result<Vec<(String, UsageTotals)>>;
    /// A tenant's list spend and cost in a month (`yyyymm`).
    async fn month_spend(&self, tenant: &str, month: u32) -> Result<(u64, u64)>;
    /// A tenant's quota overrides (JSON), if an admin set any.
    async fn quotas(&self, tenant: &str) -> Result<Option<String>>;
    /// Sets (or with `None` clears) a tenant's quota overrides.
    async fn set_quotas(&self, tenant: &str, quotas: Option<String>) -> Result<()>;

    async fn insert_credential(&self, credential: Credential) -> Result<()>;
    /// The credential with this hash, unless revoked.
    async fn credential_by_hash(&self, hash: &str) -> Result<Option<Credential>>;
    /// An instance's credentials of one kind that are not revoked, oldest first.
    async fn credentials(
        &self,
        tenant: &str,
        instance_id: &str,
        kind: CredentialKind,
    ) -> Result<Vec<Credential>>;
    /// Revokes an instance's credentials: of one kind, or all with `None`; with `port` only
    /// those for that port, with `id` only that one. Returns how many.
    async fn revoke_credentials(
        &self,
        tenant: &str,
        instance_id: &str,
        kind: Option<CredentialKind>,
        port: Option<u16>,
        id: Option<&str>,
    ) -> Result<u64>;
}
