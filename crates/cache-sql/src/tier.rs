//! [`SqlTier`]: the L3 tier on one SQL table.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, Value};
use sea_orm_migration::MigratorTraitSelf;
use strata_cache_core::{Clock, ConfigError, Key, StoredEntry, Tier, TierError, TierErrorKind, TierHealth, Timestamp};

use crate::config::{Backend, SqlConfig, validate_table_name};
use crate::error::{SqlError, connect_err, tier_err};
use crate::migration::{MAX_STORED_KEY_ID, Migrator};
use crate::tags;

/// Bound parameters per statement: SQLite's default limit (32766); PostgreSQL and MySQL allow
/// 65535.
fn param_limit(backend: DbBackend) -> usize {
    match backend {
        DbBackend::Sqlite => 32_766,
        _ => 65_535,
    }
}

/// Columns written per row by an upsert.
const UPSERT_COLS: usize = 7;

/// Millisecond timestamps and versions are `u64`; the columns are signed 64-bit. Clamping keeps
/// the order (values past `i64::MAX` compare equal, which last-writer-wins treats as a tie).
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The SQL text of one table on one backend.
struct Dialect {
    backend: DbBackend,
    table: String,
    get: String,
    delete: String,
    delete_namespace: String,
    invalidate_tag: String,
    sweep: String,
}

impl Dialect {
    fn new(backend: DbBackend, table: &str) -> Self {
        let t = match backend {
            DbBackend::MySql => format!("`{table}`"),
            _ => format!("\"{table}\""),
        };
        let p = |n: usize| placeholder(backend, n);
        let get = format!(
            "SELECT frame FROM {t} WHERE cache = {} AND namespace = {} AND key_id = {} AND expires_at > {}",
            p(1),
            p(2),
            p(3),
            p(4)
        );
        let delete = format!("DELETE FROM {t} WHERE cache = {} AND namespace = {} AND key_id = {}", p(1), p(2), p(3));
        let delete_namespace = format!("DELETE FROM {t} WHERE cache = {} AND namespace = {}", p(1), p(2));
        let find = match backend {
            DbBackend::Postgres => "position($3 in tags) > 0".to_owned(),
            DbBackend::MySql => "LOCATE(?, tags) > 0".to_owned(),
            _ => "instr(tags, ?) > 0".to_owned(),
        };
        let invalidate_tag = format!("DELETE FROM {t} WHERE cache = {} AND namespace = {} AND {find}", p(1), p(2));
        let sweep = match backend {
            DbBackend::MySql => format!("DELETE FROM {t} WHERE expires_at <= ? LIMIT ?"),
            DbBackend::Postgres => format!(
                "DELETE FROM {t} WHERE (cache, namespace, key_id) IN \
                 (SELECT cache, namespace, key_id FROM {t} WHERE expires_at <= $1 LIMIT $2)"
            ),
            _ => format!("DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} WHERE expires_at <= ? LIMIT ?)"),
        };
        Self { backend, table: t, get, delete, delete_namespace, invalidate_tag, sweep }
    }

    /// `SELECT key_id, frame … key_id IN (…)` for `n` ids; parameters: cache, namespace, now,
    /// then the ids.
    fn get_many(&self, n: usize) -> String {
        let mut sql = format!(
            "SELECT key_id, frame FROM {} WHERE cache = {} AND namespace = {} AND expires_at > {} AND key_id IN (",
            self.table,
            placeholder(self.backend, 1),
            placeholder(self.backend, 2),
            placeholder(self.backend, 3)
        );
        for i in 0..n {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&placeholder(self.backend, 4 + i));
        }
        sql.push(')');
        sql
    }

    /// A multi-row upsert of `n` rows where a row with an older version never replaces a newer
    /// one.
    fn upsert(&self, n: usize) -> String {
        let mut sql =
            format!("INSERT INTO {} (cache, namespace, key_id, frame, expires_at, version, tags) VALUES ", self.table);
        for r in 0..n {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..UPSERT_COLS {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&placeholder(self.backend, r * UPSERT_COLS + c + 1));
            }
            sql.push(')');
        }
        match self.backend {
            DbBackend::MySql => {
                // Assignments run left to right and see updated values: `version` goes last.
                let newer = "VALUES(version) >= version";
                sql.push_str(&format!(
                    " ON DUPLICATE KEY UPDATE frame = IF({newer}, VALUES(frame), frame), \
                     expires_at = IF({newer}, VALUES(expires_at), expires_at), \
                     tags = IF({newer}, VALUES(tags), tags), \
                     version = IF({newer}, VALUES(version), version)"
                ));
            }
            _ => sql.push_str(&format!(
                " ON CONFLICT (cache, namespace, key_id) DO UPDATE SET frame = excluded.frame, \
                 expires_at = excluded.expires_at, version = excluded.version, tags = excluded.tags \
                 WHERE {}.version <= excluded.version",
                self.table
            )),
        }
        sql
    }
}

fn placeholder(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    }
}

struct Inner {
    db: DatabaseConnection,
    name: Arc<str>,
    table: String,
    dialect: Dialect,
    clock: Arc<dyn Clock>,
}

/// The L3 tier: one SQL table through sea-orm (SQLite, PostgreSQL, MySQL/MariaDB).
///
/// - Reads skip expired rows (`WHERE expires_at > now`); [`SqlTier::sweep`] (or a task from
///   [`SqlTier::spawn_sweeper`]) deletes them in batches.
/// - Writes are upserts where the row with the higher `version` wins, whatever the order in
///   which writers arrive.
/// - `get_many` is one `IN (…)` select and `set_many` one multi-row upsert per chunk (chunks
///   keep each statement under the backend's bound-parameter limit).
/// - [`SqlTier::invalidate_tag`] deletes every row carrying a tag in one statement.
/// - Frame bytes are returned as stored: a corrupt row is the cache engine's decode error (a
///   miss), never a panic here.
///
/// Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct SqlTier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqlTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTier")
            .field("name", &self.inner.name)
            .field("table", &self.inner.table)
            .field("backend", &self.inner.dialect.backend)
            .finish()
    }
}

impl SqlTier {
    /// Connects with `config`, creates or updates the table (unless migrations are off) and
    /// returns the tier. SQLite databases run in WAL mode with the configured busy timeout.
    ///
    /// Errors: [`SqlError::Config`] for invalid settings, [`SqlError::Tier`] when the database
    /// cannot be reached (`Unavailable`), times out (`Timeout`) or the migration fails.
    pub async fn connect(config: SqlConfig) -> Result<Self, SqlError> {
        config.validate()?;
        let backend = config.backend()?;
        let mut opts = ConnectOptions::new(config.url.clone());
        opts.max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .connect_timeout(config.connect_timeout)
            .acquire_timeout(config.acquire_timeout)
            .connect_lazy(config.lazy)
            .sqlx_logging(false);
        if backend == Backend::Sqlite {
            let busy = config.busy_timeout;
            opts.map_sqlx_sqlite_opts(move |o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(busy)
            });
        }
        let db = Database::connect(opts).await.map_err(|e| connect_err(&config, e))?;
        Self::with_connection(db, &config).await
    }

    /// A tier on an existing connection (the application's own pool, say). Uses the table,
    /// name, clock and migration settings of `config`; its URL and pool settings are ignored.
    pub async fn with_connection(db: DatabaseConnection, config: &SqlConfig) -> Result<Self, SqlError> {
        validate_table_name(&config.table)?;
        let backend = db.get_database_backend();
        if config.run_migrations {
            Migrator::new(config.table.clone())
                .up(&db, None)
                .await
                .map_err(|e| tier_err(&config.name, "migrate", e))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                dialect: Dialect::new(backend, &config.table),
                db,
                name: Arc::from(config.name.as_str()),
                table: config.table.clone(),
                clock: config.clock.clone(),
            }),
        })
    }

    /// The connection (public as [`crate::raw::connection`]).
    pub(crate) fn connection(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        match self.inner.dialect.backend {
            DbBackend::Postgres => Backend::Postgres,
            DbBackend::MySql => Backend::MySql,
            _ => Backend::Sqlite,
        }
    }

    fn err(&self, op: &str, e: sea_orm::DbErr) -> TierError {
        tier_err(&self.inner.name, op, e)
    }

    fn now(&self) -> i64 {
        to_i64(self.inner.clock.now().as_millis())
    }

    fn stmt(&self, sql: String, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(self.inner.dialect.backend, sql, values)
    }

    /// Refuses an entry this tier cannot store: a key id that is too long, or a finite expiry
    /// past what the signed 64-bit `expires_at` column holds (clamping it would make the entry
    /// live forever). `Timestamp::MAX` (never expires) is stored as `i64::MAX`.
    fn refuse(&self, key: &Key, entry: &StoredEntry) -> Option<TierError> {
        if key.id().len() > MAX_STORED_KEY_ID {
            return Some(self.too_long(key));
        }
        let at = entry.meta.expires_at;
        (at != Timestamp::MAX && i64::try_from(at.as_millis()).is_err()).then(|| {
            TierError::new(
                self.inner.name.clone(),
                TierErrorKind::InvalidRequest,
                format!(
                    "expiry {} ms after the epoch is past what the SQL tier stores ({} ms); \
                     an entry that never expires has expires_at = Timestamp::MAX",
                    at.as_millis(),
                    i64::MAX
                ),
            )
        })
    }

    fn too_long(&self, key: &Key) -> TierError {
        TierError::new(
            self.inner.name.clone(),
            TierErrorKind::InvalidRequest,
            format!("key id is {} bytes; the SQL tier stores ids up to {MAX_STORED_KEY_ID} bytes", key.id().len()),
        )
    }

    /// Deletes every entry of `cache`/`namespace` that carries `tag`, in one statement; returns
    /// how many rows were deleted. Tags match exactly (no pattern characters).
    pub async fn invalidate_tag(&self, cache: &str, namespace: &str, tag: &str) -> Result<u64, TierError> {
        let values = vec![
            Value::from(cache.as_bytes().to_vec()),
            Value::from(namespace.as_bytes().to_vec()),
            Value::from(tags::needle(tag)),
        ];
        let stmt = self.stmt(self.inner.dialect.invalidate_tag.clone(), values);
        let res = self.inner.db.execute_raw(stmt).await.map_err(|e| self.err("invalidate_tag", e))?;
        Ok(res.rows_affected())
    }

    /// Deletes expired rows (as of now) in statements of at most `batch` rows each, until none
    /// is left; returns how many were deleted.
    pub async fn sweep(&self, batch: u64) -> Result<u64, TierError> {
        if batch == 0 {
            return Err(TierError::new(
                self.inner.name.clone(),
                TierErrorKind::InvalidRequest,
                "sweep batch must be >= 1",
            ));
        }
        let now = self.now();
        let mut total = 0;
        loop {
            let values = vec![Value::from(now), Value::from(to_i64(batch))];
            let stmt = self.stmt(self.inner.dialect.sweep.clone(), values);
            let n = self.inner.db.execute_raw(stmt).await.map_err(|e| self.err("sweep", e))?.rows_affected();
            total += n;
            if n < batch {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Runs [`SqlTier::sweep`] every `interval` on the current tokio runtime until the handle
    /// is stopped or dropped (or every clone of the tier is dropped). Failures are logged and
    /// retried at the next tick.
    pub fn spawn_sweeper(&self, interval: Duration, batch: u64) -> Result<SweeperHandle, SqlError> {
        if interval.is_zero() || batch == 0 {
            return Err(ConfigError::new("sql.sweep", "sweeper interval and batch must be greater than zero").into());
        }
        strata_cache_core::options::check_max_duration("sql.sweep", interval)?;
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| ConfigError::new("sql.sweep", "spawn_sweeper must be called inside a tokio runtime"))?;
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let task = rt.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let tier = SqlTier { inner };
                match tier.sweep(batch).await {
                    Ok(n) if n > 0 => tracing::debug!(tier = %tier.inner.name, table = %tier.inner.table, deleted = n, "swept expired rows"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(tier = %tier.inner.name, error = %e, "sweep failed"),
                }
            }
        });
        Ok(SweeperHandle { task: task.abort_handle() })
    }

    /// Writes one chunk of rows (already deduplicated).
    async fn upsert_chunk(&self, rows: &[&(Key, StoredEntry)]) -> Result<(), TierError> {
        let mut values = Vec::with_capacity(rows.len() * UPSERT_COLS);
        for (key, entry) in rows {
            values.push(Value::from(key.cache().as_bytes().to_vec()));
            values.push(Value::from(key.namespace().as_str().as_bytes().to_vec()));
            values.push(Value::from(key.id().as_bytes().to_vec()));
            values.push(Value::from(entry.frame.to_vec()));
            values.push(Value::from(to_i64(entry.meta.expires_at.as_millis())));
            values.push(Value::from(to_i64(entry.meta.version)));
            values.push(Value::from(tags::encode_list(&entry.meta.tags)));
        }
        let stmt = self.stmt(self.inner.dialect.upsert(rows.len()), values);
        self.inner.db.execute_raw(stmt).await.map_err(|e| self.err("set", e))?;
        Ok(())
    }

    /// Reads one chunk of ids of one cache/namespace.
    async fn select_chunk(
        &self,
        cache: &str,
        namespace: &str,
        ids: &[&str],
        now: i64,
    ) -> Result<HashMap<Vec<u8>, Bytes>, TierError> {
        let mut values = Vec::with_capacity(ids.len() + 3);
        values.push(Value::from(cache.as_bytes().to_vec()));
        values.push(Value::from(namespace.as_bytes().to_vec()));
        values.push(Value::from(now));
        values.extend(ids.iter().map(|id| Value::from(id.as_bytes().to_vec())));
        let stmt = self.stmt(self.inner.dialect.get_many(ids.len()), values);
        let rows = self.inner.db.query_all_raw(stmt).await.map_err(|e| self.err("get_many", e))?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: Vec<u8> = row.try_get_by_index(0).map_err(|e| self.err("get_many", e))?;
            let frame: Vec<u8> = row.try_get_by_index(1).map_err(|e| self.err("get_many", e))?;
            out.insert(id, Bytes::from(frame));
        }
        Ok(out)
    }
}

/// Stops a sweeper task from [`SqlTier::spawn_sweeper`] when stopped or dropped.
#[derive(Debug)]
pub struct SweeperHandle {
    task: tokio::task::AbortHandle,
}

impl SweeperHandle {
    /// Stops the sweeper.
    pub fn stop(self) {}

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for SweeperHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl Tier for SqlTier {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn get(&self, key: &Key) -> Result<Option<Bytes>, TierError> {
        if key.id().len() > MAX_STORED_KEY_ID {
            return Ok(None);
        }
        let values = vec![
            Value::from(key.cache().as_bytes().to_vec()),
            Value::from(key.namespace().as_str().as_bytes().to_vec()),
            Value::from(key.id().as_bytes().to_vec()),
            Value::from(self.now()),
        ];
        let stmt = self.stmt(self.inner.dialect.get.clone(), values);
        let Some(row) = self.inner.db.query_one_raw(stmt).await.map_err(|e| self.err("get", e))? else {
            return Ok(None);
        };
        let frame: Vec<u8> = row.try_get_by_index(0).map_err(|e| self.err("get", e))?;
        Ok(Some(Bytes::from(frame)))
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>, TierError> {
        let mut out = vec![None; keys.len()];
        // Group by cache/namespace (usually one group), keeping every position of each id.
        let mut groups: HashMap<(&str, &str), HashMap<&str, Vec<usize>>> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            if k.id().len() <= MAX_STORED_KEY_ID {
                groups.entry((k.cache(), k.namespace().as_str())).or_default().entry(k.id()).or_default().push(i);
            }
        }
        let now = self.now();
        let per_chunk = param_limit(self.inner.dialect.backend) - 3;
        for ((cache, namespace), ids) in groups {
            let list: Vec<&str> = ids.keys().copied().collect();
            for chunk in list.chunks(per_chunk) {
                let found = self.select_chunk(cache, namespace, chunk, now).await?;
                for (id, frame) in found {
                    let Ok(id) = std::str::from_utf8(&id) else { continue };
                    if let Some(positions) = ids.get(id) {
                        for &i in positions {
                            out[i] = Some(frame.clone());
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    async fn set(&self, key: &Key, entry: &StoredEntry) -> Result<(), TierError> {
        if let Some(e) = self.refuse(key, entry) {
            return Err(e);
        }
        let row = (key.clone(), entry.clone());
        self.upsert_chunk(&[&row]).await
    }

    async fn set_many(&self, entries: &[(Key, StoredEntry)]) -> Result<(), TierError> {
        // One statement may not touch a row twice (PostgreSQL refuses): keep the newest entry
        // per key, the later one on a tie, as sequential writes would.
        let mut newest: HashMap<&Key, usize> = HashMap::with_capacity(entries.len());
        let mut refused = None;
        for (i, (k, e)) in entries.iter().enumerate() {
            if let Some(err) = self.refuse(k, e) {
                refused.get_or_insert(err);
                continue;
            }
            newest
                .entry(k)
                .and_modify(|j| {
                    if entries[*j].1.meta.version <= e.meta.version {
                        *j = i;
                    }
                })
                .or_insert(i);
        }
        let mut rows: Vec<usize> = newest.into_values().collect();
        rows.sort_unstable();
        let rows: Vec<&(Key, StoredEntry)> = rows.into_iter().map(|i| &entries[i]).collect();
        let per_chunk = param_limit(self.inner.dialect.backend) / UPSERT_COLS;
        for chunk in rows.chunks(per_chunk) {
            self.upsert_chunk(chunk).await?;
        }
        match refused {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn delete(&self, key: &Key) -> Result<(), TierError> {
        let values = vec![
            Value::from(key.cache().as_bytes().to_vec()),
            Value::from(key.namespace().as_str().as_bytes().to_vec()),
            Value::from(key.id().as_bytes().to_vec()),
        ];
        let stmt = self.stmt(self.inner.dialect.delete.clone(), values);
        self.inner.db.execute_raw(stmt).await.map_err(|e| self.err("delete", e))?;
        Ok(())
    }

    async fn invalidate_tag(&self, cache: &str, namespace: &str, tag: &str) -> Result<u64, TierError> {
        SqlTier::invalidate_tag(self, cache, namespace, tag).await
    }

    /// One `DELETE … WHERE cache = ? AND namespace = ?` (the cache's auto-recovery uses it when
    /// an outage missed more writes than it could remember).
    async fn invalidate_namespace(&self, cache: &str, namespace: &str) -> Result<u64, TierError> {
        let values = vec![Value::from(cache.as_bytes().to_vec()), Value::from(namespace.as_bytes().to_vec())];
        let stmt = self.stmt(self.inner.dialect.delete_namespace.clone(), values);
        let res = self.inner.db.execute_raw(stmt).await.map_err(|e| self.err("invalidate_namespace", e))?;
        Ok(res.rows_affected())
    }

    async fn health(&self) -> TierHealth {
        let stmt = Statement::from_string(self.inner.dialect.backend, "SELECT 1");
        match self.inner.db.query_one_raw(stmt).await {
            Ok(Some(_)) => TierHealth::Healthy,
            Ok(None) => TierHealth::Unhealthy("SELECT 1 returned no row".into()),
            Err(e) => TierHealth::Unhealthy(self.err("health", e).to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_text() {
        let d = Dialect::new(DbBackend::Postgres, "c");
        assert_eq!(
            d.get_many(2),
            "SELECT key_id, frame FROM \"c\" WHERE cache = $1 AND namespace = $2 AND expires_at > $3 AND key_id IN ($4, $5)"
        );
        assert!(d.upsert(2).contains("($8, $9, $10, $11, $12, $13, $14) ON CONFLICT"));
        assert!(d.upsert(1).ends_with("WHERE \"c\".version <= excluded.version"));
        let m = Dialect::new(DbBackend::MySql, "c");
        assert!(m.upsert(1).starts_with("INSERT INTO `c`"));
        assert!(m.upsert(1).ends_with("version = IF(VALUES(version) >= version, VALUES(version), version)"));
        assert_eq!(to_i64(u64::MAX), i64::MAX);
        assert_eq!(to_i64(5), 5);
    }
}
