//! The embedded store: one SQLite file in WAL mode. Calls run on the blocking pool; each is
//! a single short statement, so one connection behind a mutex is enough.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use faas_api::{ExecStatus, ExecutionResult, Instance, Role, Snapshot};
use rusqlite::{Connection, OptionalExtension, params};

use crate::billing::{Metered, Pricing, UsageKind, UsageRecord, month_of};
use crate::{
    Credential, CredentialKind, KeyRecord, PackWork, Result, Store, StoreError, UsageGroup,
    UsageTotals,
};

/// Schema migrations, applied in order; the database's `user_version` is how many ran.
/// Never edit one that has shipped: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: keys and executions.
    "CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT,
        role TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        created_at_ms INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX api_keys_tenant ON api_keys(tenant);
    CREATE TABLE executions (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        result TEXT NOT NULL
    );
    CREATE INDEX executions_tenant ON executions(tenant, created_at_ms);
    CREATE INDEX executions_status ON executions(status);",
    // 2: persistent instances.
    "CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX instances_tenant ON instances(tenant, created_at_ms);",
    // 3: credentials scoped to one instance (SSH keys, public port tokens).
    "CREATE TABLE instance_credentials (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        port INTEGER,
        hash TEXT NOT NULL UNIQUE,
        created_at_ms INTEGER NOT NULL,
        revoked_at_ms INTEGER
    );
    CREATE INDEX instance_credentials_instance ON instance_credentials(instance_id, kind);",
    // 4: snapshots (a deleted one keeps its row: the lineage of its children).
    "CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        deleted_at_ms INTEGER,
        record TEXT NOT NULL,
        manifest TEXT NOT NULL
    );
    CREATE INDEX snapshots_tenant ON snapshots(tenant, created_at_ms);",
    // 5: snapshot data as chunks in the blob store: which chunks each snapshot's pack
    // holds, and each chunk's owner and compressed size (one row per stored chunk).
    "CREATE TABLE snapshot_packs (
        snapshot_id TEXT PRIMARY KEY,
        pack TEXT NOT NULL
    );
    CREATE TABLE pack_chunks (
        snapshot_id TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (snapshot_id, digest)
    );
    CREATE INDEX pack_chunks_digest ON pack_chunks(digest);
    CREATE TABLE chunks (
        digest TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        stored_bytes INTEGER NOT NULL
    );
    CREATE INDEX chunks_tenant ON chunks(tenant);",
    // 6: metering. One row per charge (its id makes a second write of it a no-op), each
    // tenant's spend per month (what volume discounts and spend caps read), the storage
    // each tenant held since its last charge, quota overrides, and keys' rate-limit tiers.
    "CREATE TABLE usage (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        kind TEXT NOT NULL,
        resource TEXT NOT NULL,
        mode TEXT NOT NULL,
        image TEXT NOT NULL,
        start_ms INTEGER NOT NULL,
        end_ms INTEGER NOT NULL,
        cpu_us INTEGER NOT NULL,
        wall_us INTEGER NOT NULL,
        memory_peak_bytes INTEGER NOT NULL,
        memory_avg_bytes INTEGER NOT NULL,
        memory_kib_ms INTEGER NOT NULL,
        storage_kib_ms INTEGER NOT NULL,
        egress_bytes INTEGER NOT NULL,
        gpu_ms INTEGER NOT NULL,
        list_micros INTEGER NOT NULL,
        cost_micros INTEGER NOT NULL
    );
    CREATE INDEX usage_tenant ON usage(tenant, end_ms);
    CREATE TABLE month_spend (
        tenant TEXT NOT NULL,
        month INTEGER NOT NULL,
        list_micros INTEGER NOT NULL,
        cost_micros INTEGER NOT NULL,
        PRIMARY KEY (tenant, month)
    );
    CREATE TABLE storage_meters (
        tenant TEXT PRIMARY KEY,
        bytes INTEGER NOT NULL,
        since_ms INTEGER NOT NULL,
        carry_pico INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE tenant_quotas (
        tenant TEXT PRIMARY KEY,
        quotas TEXT NOT NULL
    );
    ALTER TABLE api_keys ADD COLUMN rate_tier TEXT;",
];

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Prices charges as they are recorded.
    pricing: Arc<Pricing>,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `path`; charges are priced
    /// with `pricing`.
    pub fn open(path: &Path, pricing: Pricing) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // WAL + NORMAL: a commit survives a process crash; only an OS crash can lose the
        // last transactions, never corrupt the file.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&conn)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), pricing: Arc::new(pricing) })
    }

    async fn with<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await?
    }
}

fn migrate(conn: &Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew { found: version, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn role_from(s: &str) -> Role {
    if s == "admin" { Role::Admin } else { Role::Tenant }
}

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
    Ok(KeyRecord {
        id: row.get(0)?,
        tenant: row.get(1)?,
        name: row.get(2)?,
        role: role_from(&row.get::<_, String>(3)?),
        hash: row.get(4)?,
        created_at_ms: row.get::<_, i64>(5)? as u64,
        revoked: row.get::<_, i64>(6)? != 0,
        rate_tier: row.get(7)?,
    })
}

const KEY_COLUMNS: &str = "id, tenant, name, role, hash, created_at_ms, revoked, rate_tier";

/// Prices `m` and records it, with the month's spend, unless a charge with its id exists.
fn insert_charge(tx: &Connection, pricing: &Pricing, m: &Metered) -> rusqlite::Result<()> {
    let month = month_of(m.end_ms);
    let before: i64 = tx
        .prepare_cached("SELECT list_micros FROM month_spend WHERE tenant = ?1 AND month = ?2")?
        .query_row(params![m.tenant, month], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    // Clamped so that the month's sums stay within SQLite's integers.
    const MAX_CHARGE: u64 = 1 << 53;
    let list = m.settled_list_micros.unwrap_or_else(|| pricing.list_micros(m)).min(MAX_CHARGE);
    let cost = pricing.cost_micros(before as u64, list);
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO usage (id, tenant, kind, resource, mode, image, start_ms,
             end_ms, cpu_us, wall_us, memory_peak_bytes, memory_avg_bytes, memory_kib_ms,
             storage_kib_ms, egress_bytes, gpu_ms, list_micros, cost_micros)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        )?
        .execute(params![
            m.id,
            m.tenant,
            m.kind.as_str(),
            m.resource,
            m.mode,
            m.image,
            m.start_ms as i64,
            m.end_ms as i64,
            m.cpu_us as i64,
            m.wall_us as i64,
            m.memory_peak_bytes as i64,
            m.memory_avg_bytes as i64,
            m.memory_kib_ms as i64,
            m.storage_kib_ms as i64,
            m.egress_bytes as i64,
            m.gpu_ms as i64,
            list as i64,
            cost as i64,
        ])?;
    if inserted > 0 {
        tx.prepare_cached(
            "INSERT INTO month_spend (tenant, month, list_micros, cost_micros) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(tenant, month) DO UPDATE SET list_micros = list_micros + excluded.list_micros,
             cost_micros = cost_micros + excluded.cost_micros",
        )?
        .execute(params![m.tenant, month, list as i64, cost as i64])?;
    }
    Ok(())
}

/// Charges the storage `tenant` held since its last charge (at the bytes it held then) and
/// starts a new period at what it holds now. Called in the transaction of every change to
/// its chunks, and by the meter.
fn advance_storage(
    tx: &Connection,
    pricing: &Pricing,
    tenant: &str,
    now: u64,
) -> rusqlite::Result<()> {
    let held: i64 = tx
        .prepare_cached("SELECT COALESCE(SUM(stored_bytes), 0) FROM chunks WHERE tenant = ?1")?
        .query_row(params![tenant], |r| r.get(0))?;
    let last: Option<(i64, i64, i64)> = tx
        .prepare_cached("SELECT bytes, since_ms, carry_pico FROM storage_meters WHERE tenant = ?1")?
        .query_row(params![tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let mut carry = 0;
    if let Some((bytes, since, carried)) = last {
        let (bytes, since) = (bytes as u64, since as u64);
        carry = carried as u64;
        if bytes > 0 && now > since {
            let kib_ms = (bytes as u128 / 1024 * (now - since) as u128).min(i64::MAX as u128);
            let mut m = Metered {
                id: format!("st_{tenant}_{since}"),
                tenant: tenant.to_owned(),
                kind: UsageKind::Storage,
                resource: tenant.to_owned(),
                start_ms: since,
                end_ms: now,
                storage_kib_ms: kib_ms as u64,
                ..Default::default()
            };
            let (list, left) = pricing.settle(&m, carry, false);
            (m.settled_list_micros, carry) = (Some(list), left);
            insert_charge(tx, pricing, &m)?;
        }
    } else if held == 0 {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO storage_meters (tenant, bytes, since_ms, carry_pico) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(tenant) DO UPDATE SET bytes = excluded.bytes,
         since_ms = MAX(since_ms, excluded.since_ms), carry_pico = excluded.carry_pico",
    )?
    .execute(params![tenant, held, now as i64, carry as i64])?;
    Ok(())
}

/// A moment as SQLite's signed integer (later than it can hold: the latest it can).
fn ms(at: u64) -> i64 {
    at.min(i64::MAX as u64) as i64
}

fn usage_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<UsageRecord> {
    let n = |i: usize| row.get::<_, i64>(i).map(|v| v as u64);
    Ok(UsageRecord {
        metered: Metered {
            id: row.get(0)?,
            tenant: row.get(1)?,
            kind: UsageKind::parse(&row.get::<_, String>(2)?),
            resource: row.get(3)?,
            mode: row.get(4)?,
            image: row.get(5)?,
            start_ms: n(6)?,
            end_ms: n(7)?,
            cpu_us: n(8)?,
            wall_us: n(9)?,
            memory_peak_bytes: n(10)?,
            memory_avg_bytes: n(11)?,
            memory_kib_ms: n(12)?,
            storage_kib_ms: n(13)?,
            egress_bytes: n(14)?,
            gpu_ms: n(15)?,
            settled_list_micros: None,
        },
        list_micros: n(16)?,
        cost_micros: n(17)?,
    })
}

fn decode(id: &str, json: &str) -> Result<ExecutionResult> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt { id: id.to_owned(), source })
}

fn encode(record: &ExecutionResult) -> String {
    // Serialising plain data cannot fail.
    serde_json::to_string(record).unwrap_or_default()
}

const CREDENTIAL_COLUMNS: &str = "id, tenant, instance_id, kind, port, hash, created_at_ms";

fn credential_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Credential> {
    let kind = match row.get::<_, String>(3)?.as_str() {
        "ssh_key" => CredentialKind::SshKey,
        _ => CredentialKind::PortToken,
    };
    Ok(Credential {
        id: row.get(0)?,
        tenant: row.get(1)?,
        instance_id: row.get(2)?,
        kind,
        port: row.get::<_, Option<i64>>(4)?.map(|p| p as u16),
        hash: row.get(5)?,
        created_at_ms: row.get::<_, i64>(6)? as u64,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn decode_instance(id: &str, json: &str) -> Result<Instance> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt { id: id.to_owned(), source })
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_instance_charged(
        &self,
        tenant: &str,
        instance: &Instance,
        charge: Option<&Metered>,
    ) -> Result<()> {
        let (pricing, charged) = (Arc::clone(&self.pricing), charge.cloned());
        let (tenant, id, status, created) = (
            tenant.to_owned(),
            instance.id.clone(),
            instance.status.as_str(),
            instance.created_at_ms as i64,
        );
        let json = serde_json::to_string(instance).unwrap_or_default();
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            tx.prepare_cached(
                "INSERT INTO instances (id, tenant, status, created_at_ms, record) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET status = excluded.status, record = excluded.record",
            )?
            .execute(params![id, tenant, status, created, json])?;
            if let Some(m) = &charged {
                insert_charge(&tx, &pricing, m)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn instance(&self, tenant: &str, id: &str) -> Result<Option<Instance>> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        self.with(move |c| {
            let json: Option<String> = c
                .prepare_cached("SELECT record FROM instances WHERE id = ?1 AND tenant = ?2 AND status != 'deleted'")?
                .query_row(params![id, tenant], |r| r.get(0))
                .optional()?;
            json.map(|j| decode_instance(&id, &j)).transpose()
        })
        .await
    }

    async fn list_instances(&self, tenant: &str) -> Result<Vec<Instance>> {
        let tenant = tenant.to_owned();
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, record FROM instances WHERE tenant = ?1 AND status != 'deleted' ORDER BY created_at_ms, id",
            )?;
            let rows: Vec<(String, String)> =
                stmt.query_map([tenant], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
            rows.iter().map(|(id, json)| decode_instance(id, json)).collect()
        })
        .await
    }

    async fn live_instances(&self) -> Result<Vec<(String, Instance)>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT tenant, id, record FROM instances WHERE status != 'deleted'")?;
            let rows: Vec<(String, String, String)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            rows.iter().map(|(t, id, json)| Ok((t.clone(), decode_instance(id, json)?))).collect()
        })
        .await
    }

    async fn insert_snapshot(
        &self,
        tenant: &str,
        snapshot: &Snapshot,
        manifest: &str,
    ) -> Result<()> {
        let (tenant, id, created) =
            (tenant.to_owned(), snapshot.id.clone(), snapshot.created_at_ms as i64);
        let (json, manifest) =
            (serde_json::to_string(snapshot).unwrap_or_default(), manifest.to_owned());
        self.with(move |c| {
            c.prepare_cached(
                "INSERT INTO snapshots (id, tenant, created_at_ms, record, manifest) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id, tenant, created, json, manifest])?;
            Ok(())
        })
        .await
    }

    async fn snapshot(&self, tenant: &str, id: &str) -> Result<Option<(Snapshot, String)>> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        self.with(move |c| {
            let row: Option<(String, String)> = c
                .prepare_cached(
                    "SELECT record, manifest FROM snapshots WHERE id = ?1 AND tenant = ?2 AND deleted_at_ms IS NULL",
                )?
                .query_row(params![id, tenant], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            row.map(|(json, manifest)| {
                serde_json::from_str(&json)
                    .map(|s| (s, manifest))
                    .map_err(|source| StoreError::Corrupt { id: id.clone(), source })
            })
            .transpose()
        })
        .await
    }

    async fn list_snapshots(&self, tenant: &str, deleted: bool) -> Result<Vec<Snapshot>> {
        let tenant = tenant.to_owned();
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, record, deleted_at_ms FROM snapshots
                 WHERE tenant = ?1 AND (?2 OR deleted_at_ms IS NULL) ORDER BY created_at_ms, id",
            )?;
            let rows: Vec<(String, String, Option<i64>)> = stmt
                .query_map(params![tenant, deleted], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            rows.iter()
                .map(|(id, json, deleted_at)| {
                    let mut snapshot: Snapshot = serde_json::from_str(json)
                        .map_err(|source| StoreError::Corrupt { id: id.clone(), source })?;
                    snapshot.deleted_at_ms = deleted_at.map(|t| t as u64);
                    Ok(snapshot)
                })
                .collect()
        })
        .await
    }

    async fn delete_snapshot(&self, tenant: &str, id: &str) -> Result<bool> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        let now = now_ms();
        self.with(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE snapshots SET deleted_at_ms = ?3 WHERE id = ?1 AND tenant = ?2 AND deleted_at_ms IS NULL",
                )?
                .execute(params![id, tenant, now])?;
            Ok(n > 0)
        })
        .await
    }

    async fn insert_pack(
        &self,
        tenant: &str,
        snapshot: &Snapshot,
        pack: &str,
        chunks: Vec<(String, u64)>,
    ) -> Result<()> {
        let (tenant, id, pack) = (tenant.to_owned(), snapshot.id.clone(), pack.to_owned());
        let json = serde_json::to_string(snapshot).unwrap_or_default();
        let pricing = Arc::clone(&self.pricing);
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            // What the tenant held until now is charged at what it was.
            advance_storage(&tx, &pricing, &tenant, now_ms() as u64)?;
            tx.prepare_cached("INSERT INTO snapshot_packs (snapshot_id, pack) VALUES (?1, ?2)")?
                .execute(params![id, pack])?;
            let mut chunk = tx.prepare_cached(
                "INSERT INTO chunks (digest, tenant, stored_bytes) VALUES (?1, ?2, ?3)
                 ON CONFLICT(digest) DO NOTHING",
            )?;
            let mut held = tx.prepare_cached(
                "INSERT OR IGNORE INTO pack_chunks (snapshot_id, digest) VALUES (?1, ?2)",
            )?;
            for (digest, stored) in &chunks {
                chunk.execute(params![digest, tenant, *stored as i64])?;
                held.execute(params![id, digest])?;
            }
            drop((chunk, held));
            tx.prepare_cached("UPDATE snapshots SET record = ?2 WHERE id = ?1")?
                .execute(params![id, json])?;
            advance_storage(&tx, &pricing, &tenant, now_ms() as u64)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn pack(&self, snapshot_id: &str) -> Result<Option<String>> {
        let id = snapshot_id.to_owned();
        self.with(move |c| {
            Ok(c.prepare_cached("SELECT pack FROM snapshot_packs WHERE snapshot_id = ?1")?
                .query_row(params![id], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn release_pack(&self, snapshot_id: &str) -> Result<Vec<String>> {
        let id = snapshot_id.to_owned();
        let pricing = Arc::clone(&self.pricing);
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            let tenant: Option<String> = tx
                .prepare_cached("SELECT tenant FROM snapshots WHERE id = ?1")?
                .query_row(params![id], |r| r.get(0))
                .optional()?;
            if let Some(tenant) = &tenant {
                advance_storage(&tx, &pricing, tenant, now_ms() as u64)?;
            }
            let held: Vec<String> = tx
                .prepare_cached("SELECT digest FROM pack_chunks WHERE snapshot_id = ?1")?
                .query_map(params![id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            tx.prepare_cached("DELETE FROM pack_chunks WHERE snapshot_id = ?1")?
                .execute(params![id])?;
            tx.prepare_cached("DELETE FROM snapshot_packs WHERE snapshot_id = ?1")?
                .execute(params![id])?;
            let mut unheld = Vec::new();
            for digest in held {
                let n = tx
                    .prepare_cached(
                        "DELETE FROM chunks WHERE digest = ?1
                         AND NOT EXISTS (SELECT 1 FROM pack_chunks WHERE digest = ?1)",
                    )?
                    .execute(params![digest])?;
                if n > 0 {
                    unheld.push(digest);
                }
            }
            if let Some(tenant) = &tenant {
                advance_storage(&tx, &pricing, tenant, now_ms() as u64)?;
            }
            tx.commit()?;
            Ok(unheld)
        })
        .await
    }

    async fn pack_work(&self) -> Result<PackWork> {
        self.with(move |c| {
            let unpacked = c
                .prepare_cached(
                    "SELECT tenant, id FROM snapshots WHERE deleted_at_ms IS NULL
                     AND id NOT IN (SELECT snapshot_id FROM snapshot_packs) ORDER BY created_at_ms",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let unreleased = c
                .prepare_cached(
                    "SELECT snapshot_id FROM snapshot_packs WHERE snapshot_id IN
                     (SELECT id FROM snapshots WHERE deleted_at_ms IS NOT NULL)",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let packed = c
                .prepare_cached("SELECT snapshot_id FROM snapshot_packs")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(PackWork { unpacked, unreleased, packed })
        })
        .await
    }

    async fn chunk_digests(&self) -> Result<Vec<String>> {
        self.with(move |c| {
            Ok(c.prepare_cached("SELECT digest FROM chunks")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn stored_bytes(&self, tenant: &str) -> Result<u64> {
        let tenant = tenant.to_owned();
        self.with(move |c| {
            let sum: i64 = c
                .prepare_cached(
                    "SELECT COALESCE(SUM(stored_bytes), 0) FROM chunks WHERE tenant = ?1",
                )?
                .query_row(params![tenant], |r| r.get(0))?;
            Ok(sum as u64)
        })
        .await
    }

    async fn record_usage(&self, charges: Vec<Metered>) -> Result<()> {
        let pricing = Arc::clone(&self.pricing);
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            for m in &charges {
                insert_charge(&tx, &pricing, m)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn meter_storage(&self, now_ms: u64) -> Result<()> {
        let pricing = Arc::clone(&self.pricing);
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            let tenants: Vec<String> = tx
                .prepare_cached(
                    "SELECT tenant FROM storage_meters UNION SELECT DISTINCT tenant FROM chunks",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for tenant in tenants {
                advance_storage(&tx, &pricing, &tenant, now_ms)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn usage_records(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UsageRecord>> {
        let (tenant, after) = (tenant.to_owned(), after.map(str::to_owned));
        self.with(move |c| {
            Ok(c.prepare_cached(
                "SELECT id, tenant, kind, resource, mode, image, start_ms, end_ms, cpu_us, wall_us,
                 memory_peak_bytes, memory_avg_bytes, memory_kib_ms, storage_kib_ms, egress_bytes,
                 gpu_ms, list_micros, cost_micros FROM usage
                 WHERE tenant = ?1 AND end_ms >= ?2 AND end_ms < ?3 AND rowid >
                 COALESCE((SELECT rowid FROM usage WHERE id = ?5 AND tenant = ?1), 0)
                 ORDER BY rowid LIMIT ?4",
            )?
            .query_map(
                params![tenant, ms(from_ms), ms(to_ms), limit as i64, after],
                usage_from_row,
            )?
            .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn usage_summary(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        group: UsageGroup,
    ) -> Result<Vec<(String, UsageTotals)>> {
        let tenant = tenant.to_owned();
        let key = match group {
            UsageGroup::Total => "''",
            UsageGroup::Day => "CAST(end_ms / 86400000 AS TEXT)",
            UsageGroup::Mode => "CASE kind WHEN 'storage' THEN 'storage' ELSE mode END",
            UsageGroup::Image => "CASE kind WHEN 'storage' THEN 'snapshots' ELSE image END",
        };
        self.with(move |c| {
            let sql = format!(
                "SELECT {key}, COUNT(*), SUM(cpu_us), SUM(wall_us), SUM(memory_kib_ms),
                 MAX(memory_peak_bytes), SUM(storage_kib_ms), SUM(egress_bytes), SUM(gpu_ms),
                 SUM(list_micros), SUM(cost_micros) FROM usage
                 WHERE tenant = ?1 AND end_ms >= ?2 AND end_ms < ?3 GROUP BY 1 ORDER BY MIN(end_ms)"
            );
            let rows = c
                .prepare_cached(&sql)?
                .query_map(params![tenant, ms(from_ms), ms(to_ms)], |r| {
                    let n = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
                    Ok((
                        r.get::<_, String>(0)?,
                        UsageTotals {
                            records: n(1)?,
                            cpu_us: n(2)?,
                            wall_us: n(3)?,
                            memory_kib_ms: n(4)?,
                            memory_peak_bytes: n(5)?,
                            storage_kib_ms: n(6)?,
                            egress_bytes: n(7)?,
                            gpu_ms: n(8)?,
                            list_micros: n(9)?,
                            cost_micros: n(10)?,
                        },
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
        .await
    }

    async fn month_spend(&self, tenant: &str, month: u32) -> Result<(u64, u64)> {
        let tenant = tenant.to_owned();
        self.with(move |c| {
            let row: Option<(i64, i64)> = c
                .prepare_cached(
                    "SELECT list_micros, cost_micros FROM month_spend WHERE tenant = ?1 AND month = ?2",
                )?
                .query_row(params![tenant, month], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(row.map_or((0, 0), |(l, c)| (l as u64, c as u64)))
        })
        .await
    }

    async fn quotas(&self, tenant: &str) -> Result<Option<String>> {
        let tenant = tenant.to_owned();
        self.with(move |c| {
            Ok(c.prepare_cached("SELECT quotas FROM tenant_quotas WHERE tenant = ?1")?
                .query_row(params![tenant], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn set_quotas(&self, tenant: &str, quotas: Option<String>) -> Result<()> {
        let tenant = tenant.to_owned();
        self.with(move |c| {
            match quotas {
                Some(q) => c
                    .prepare_cached(
                        "INSERT INTO tenant_quotas (tenant, quotas) VALUES (?1, ?2)
                         ON CONFLICT(tenant) DO UPDATE SET quotas = excluded.quotas",
                    )?
                    .execute(params![tenant, q])?,
                None => c
                    .prepare_cached("DELETE FROM tenant_quotas WHERE tenant = ?1")?
                    .execute(params![tenant])?,
            };
            Ok(())
        })
        .await
    }

    async fn total_stored_bytes(&self) -> Result<u64> {
        self.with(move |c| {
            let sum: i64 = c
                .prepare_cached("SELECT COALESCE(SUM(stored_bytes), 0) FROM chunks")?
                .query_row([], |r| r.get(0))?;
            Ok(sum as u64)
        })
        .await
    }

    async fn insert_credential(&self, cred: Credential) -> Result<()> {
        self.with(move |c| {
            c.prepare_cached(&format!(
                "INSERT INTO instance_credentials ({CREDENTIAL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ))?
            .execute(params![
                cred.id,
                cred.tenant,
                cred.instance_id,
                cred.kind.as_str(),
                cred.port.map(i64::from),
                cred.hash,
                cred.created_at_ms as i64
            ])?;
            Ok(())
        })
        .await
    }

    async fn credential_by_hash(&self, hash: &str) -> Result<Option<Credential>> {
        let hash = hash.to_owned();
        self.with(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM instance_credentials WHERE hash = ?1 AND revoked_at_ms IS NULL"
            ))?
            .query_row([hash], credential_from_row)
            .optional()?)
        })
        .await
    }

    async fn credentials(
        &self,
        tenant: &str,
        instance_id: &str,
        kind: CredentialKind,
    ) -> Result<Vec<Credential>> {
        let (tenant, instance_id) = (tenant.to_owned(), instance_id.to_owned());
        self.with(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM instance_credentials
                 WHERE tenant = ?1 AND instance_id = ?2 AND kind = ?3 AND revoked_at_ms IS NULL
                 ORDER BY created_at_ms, id"
            ))?;
            let rows = stmt
                .query_map(params![tenant, instance_id, kind.as_str()], credential_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    async fn revoke_credentials(
        &self,
        tenant: &str,
        instance_id: &str,
        kind: Option<CredentialKind>,
        port: Option<u16>,
        id: Option<&str>,
    ) -> Result<u64> {
        let (tenant, instance_id) = (tenant.to_owned(), instance_id.to_owned());
        let (kind, port, id) =
            (kind.map(CredentialKind::as_str), port.map(i64::from), id.map(str::to_owned));
        self.with(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE instance_credentials SET revoked_at_ms = ?6
                     WHERE tenant = ?1 AND instance_id = ?2 AND revoked_at_ms IS NULL
                       AND (?3 IS NULL OR kind = ?3) AND (?4 IS NULL OR port = ?4)
                       AND (?5 IS NULL OR id = ?5)",
                )?
                .execute(params![tenant, instance_id, kind, port, id, now_ms()])?;
            Ok(n as u64)
        })
        .await
    }

    async fn insert_key(&self, key: KeyRecord) -> Result<()> {
        self.with(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
                params![
                    key.id,
                    key.tenant,
                    key.name,
                    key.role.as_str(),
                    key.hash,
                    key.created_at_ms as i64,
                    key.revoked as i64,
                    key.rate_tier
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>> {
        let hash = hash.to_owned();
        self.with(move |c| {
            Ok(c.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?1"))?
                .query_row([hash], key_from_row)
                .optional()?)
        })
        .await
    }

    async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>> {
        let tenant = tenant.map(str::to_owned);
        self.with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE ?1 IS NULL OR tenant = ?1 ORDER BY created_at_ms, id"
            ))?;
            let keys = stmt.query_map([tenant], key_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(keys)
        })
        .await
    }

    async fn revoke_key(&self, id: &str, tenant: Option<&str>) -> Result<bool> {
        let (id, tenant) = (id.to_owned(), tenant.map(str::to_owned));
        self.with(move |c| {
            let n = c.execute(
                "UPDATE api_keys SET revoked = 1 WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)",
                params![id, tenant],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn has_admin_key(&self) -> Result<bool> {
        self.with(|c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM api_keys WHERE role = 'admin' AND revoked = 0",
                [],
                |r| r.get(0),
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn insert_execution(
        &self,
        tenant: &str,
        record: &ExecutionResult,
        charge: Option<&Metered>,
    ) -> Result<()> {
        let (pricing, charged) = (Arc::clone(&self.pricing), charge.cloned());
        let (tenant, id, status, created, json) = (
            tenant.to_owned(),
            record.id.clone(),
            record.status.as_str(),
            record.created_at_ms as i64,
            encode(record),
        );
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            tx.prepare_cached(
                "INSERT INTO executions (id, tenant, status, created_at_ms, result) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id, tenant, status, created, json])?;
            if let Some(m) = &charged {
                insert_charge(&tx, &pricing, m)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn finish_execution(
        &self,
        record: &ExecutionResult,
        charge: Option<&Metered>,
    ) -> Result<()> {
        let (pricing, charged) = (Arc::clone(&self.pricing), charge.cloned());
        let (id, status, json) = (record.id.clone(), record.status.as_str(), encode(record));
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            tx.prepare_cached("UPDATE executions SET status = ?2, result = ?3 WHERE id = ?1")?
                .execute(params![id, status, json])?;
            if let Some(m) = &charged {
                insert_charge(&tx, &pricing, m)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn execution(&self, tenant: &str, id: &str) -> Result<Option<ExecutionResult>> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        self.with(move |c| {
            let json: Option<String> = c
                .prepare_cached("SELECT result FROM executions WHERE id = ?1 AND tenant = ?2")?
                .query_row(params![id, tenant], |r| r.get(0))
                .optional()?;
            json.map(|j| decode(&id, &j)).transpose()
        })
        .await
    }

    async fn mark_interrupted_executions(&self) -> Result<u64> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let rows: Vec<(String, String)> = {
                let mut stmt =
                    tx.prepare("SELECT id, result FROM executions WHERE status = 'running'")?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?
            };
            for (id, json) in &rows {
                let mut record = decode(id, json)?;
                record.status = ExecStatus::Lost;
                tx.execute(
                    "UPDATE executions SET status = ?2, result = ?3 WHERE id = ?1",
                    params![id, record.status.as_str(), encode(&record)],
                )?;
            }
            tx.commit()?;
            Ok(rows.len() as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faas_api::{AppliedLimits, Mode, Usage};

    fn temp_db() -> (std::path::PathBuf, SqliteStore) {
        let dir = std::env::temp_dir().join(format!(
            "faas-store-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = SqliteStore::open(&dir.join("faas.db"), Pricing::default()).expect("open");
        (dir, store)
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }

    fn record(id: &str, status: ExecStatus) -> ExecutionResult {
        ExecutionResult {
            id: id.into(),
            status,
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 0.0,
            usage: Usage::default(),
            limits: AppliedLimits {
                timeout_ms: 1,
                memory_mb: 1,
                cpu: 1.0,
                pids: 1,
                output_bytes: 1,
            },
            mode: Mode::Ephemeral,
            image: "host".into(),
            created_at_ms: 1,
            snapshot_id: None,
            branches: Vec::new(),
        }
    }

    #[tokio::test]
    async fn executions_are_per_tenant_and_survive_reopen() {
        let (dir, store) = temp_db();
        store
            .insert_execution("a", &record("ex1", ExecStatus::Running), None)
            .await
            .expect("insert");
        store
            .insert_execution("a", &record("ex2", ExecStatus::Running), None)
            .await
            .expect("insert");
        store.finish_execution(&record("ex2", ExecStatus::Exited), None).await.expect("finish");
        assert!(store.execution("b", "ex1").await.expect("query").is_none());
        drop(store);
        let store = SqliteStore::open(&dir.join("faas.db"), Pricing::default()).expect("reopen");
        assert_eq!(store.mark_interrupted_executions().await.expect("mark"), 1);
        let ex1 = store.execution("a", "ex1").await.expect("query").expect("present");
        assert_eq!(ex1.status, ExecStatus::Lost);
        let ex2 = store.execution("a", "ex2").await.expect("query").expect("present");
        assert_eq!(ex2.status, ExecStatus::Exited);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn keys_revoke_within_tenant_only() {
        let (dir, store) = temp_db();
        let key = KeyRecord {
            id: "k1".into(),
            tenant: "a".into(),
            name: None,
            role: Role::Tenant,
            hash: "h1".into(),
            created_at_ms: 1,
            revoked: false,
            rate_tier: None,
        };
        store.insert_key(key).await.expect("insert");
        assert!(!store.revoke_key("k1", Some("b")).await.expect("revoke"));
        assert!(store.revoke_key("k1", Some("a")).await.expect("revoke"));
        assert!(store.key_by_hash("h1").await.expect("query").expect("present").revoked);
        assert!(!store.has_admin_key().await.expect("query"));
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn credentials_are_scoped_and_revocable() {
        let (dir, store) = temp_db();
        let cred = |id: &str, kind, port| Credential {
            id: id.into(),
            tenant: "a".into(),
            instance_id: "in_1".into(),
            kind,
            port,
            hash: format!("hash-{id}"),
            created_at_ms: 1,
        };
        store.insert_credential(cred("c1", CredentialKind::SshKey, None)).await.expect("insert");
        store
            .insert_credential(cred("c2", CredentialKind::PortToken, Some(80)))
            .await
            .expect("insert");
        store
            .insert_credential(cred("c3", CredentialKind::PortToken, Some(81)))
            .await
            .expect("insert");
        let found = store.credential_by_hash("hash-c2").await.expect("query").expect("present");
        assert_eq!(found, cred("c2", CredentialKind::PortToken, Some(80)));
        let ports = store.credentials("a", "in_1", CredentialKind::PortToken).await.expect("list");
        assert_eq!(ports.len(), 2);
        assert!(
            store.credentials("b", "in_1", CredentialKind::SshKey).await.expect("list").is_empty()
        );
        // Another tenant revokes nothing; one port's revocation leaves the rest.
        assert_eq!(
            store.revoke_credentials("b", "in_1", None, None, None).await.expect("revoke"),
            0
        );
        let kind = Some(CredentialKind::PortToken);
        assert_eq!(
            store.revoke_credentials("a", "in_1", kind, Some(80), None).await.expect("revoke"),
            1
        );
        assert!(store.credential_by_hash("hash-c2").await.expect("query").is_none());
        assert!(store.credential_by_hash("hash-c3").await.expect("query").is_some());
        assert_eq!(
            store.revoke_credentials("a", "in_1", None, None, Some("c3")).await.expect("revoke"),
            1
        );
        assert_eq!(
            store.revoke_credentials("a", "in_1", None, None, None).await.expect("revoke"),
            1
        );
        assert!(store.credential_by_hash("hash-c1").await.expect("query").is_none());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn refuses_a_newer_schema() {
        let (dir, store) = temp_db();
        drop(store);
        let conn = Connection::open(dir.join("faas.db")).expect("open");
        conn.pragma_update(None, "user_version", 99).expect("set");
        drop(conn);
        assert!(matches!(
            SqliteStore::open(&dir.join("faas.db"), Pricing::default()),
            Err(StoreError::TooNew { .. })
        ));
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn charges_are_recorded_once_and_discounted_by_the_month_spend() {
        let (_dir, store) = temp_db();
        let tiers = Pricing::default();
        let charge = |id: &str, cpu_us: u64| Metered {
            id: id.into(),
            tenant: "a".into(),
            mode: "ephemeral".into(),
            // 2026-11-23
            end_ms: 1_795_460_400_000,
            cpu_us,
            ..Default::default()
        };
        // 60 and 60 units of list price: the second crosses the 100-unit tier.
        let sixty = 60_000_000 * 1_000_000 / tiers.vcpu_second_micros;
        store.record_usage(vec![charge("u1", sixty)]).await.expect("charge");
        store.record_usage(vec![charge("u1", sixty)]).await.expect("again");
        assert_eq!(store.month_spend("a", 202611).await.expect("spend"), (60_000_000, 60_000_000));
        store.record_usage(vec![charge("u2", sixty)]).await.expect("charge");
        let (list, cost) = store.month_spend("a", 202611).await.expect("spend");
        assert_eq!(list, 120_000_000);
        assert_eq!(cost, 60_000_000 + 40_000_000 + 18_000_000);
        let records = store.usage_records("a", 0, u64::MAX, None, 10).await.expect("records");
        assert_eq!(records.len(), 2);
        let page = store.usage_records("a", 0, u64::MAX, Some("u1"), 10).await.expect("page");
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].metered.id, "u2");
        assert_eq!(records[1].cost_micros, 58_000_000);
        assert!(store.usage_records("b", 0, u64::MAX, None, 10).await.expect("records").is_empty());
        let by_mode =
            store.usage_summary("a", 0, u64::MAX, UsageGroup::Mode).await.expect("summary");
        assert_eq!(by_mode.len(), 1);
        assert_eq!(by_mode[0].0, "ephemeral");
        assert_eq!(by_mode[0].1.cost_micros, cost);
    }
}
