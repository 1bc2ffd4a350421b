//! SQL L3 benches: an L3 hit through the `Cache` (no L1, the SQL tier only: select, frame
//! decode, deserialize) vs a raw sea-orm select of the same row on the same connection. On
//! SQLite (a temp file, WAL) and, when reachable, PostgreSQL (`STRATA_BENCH_PG_URL` or
//! `postgres://postgres@127.0.0.1:5432/test`, in a throwaway table). Prints both and the ratio
//! (target <= 1.2x); criterion reports the times.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use strata::{Cache, EntryOptions, Postcard};
use strata_benches::paired_ratio;
use strata_cache_sql::raw::sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};
use strata_cache_sql::{SqlConfig, SqlTier};

const KEYS: u64 = 1_000;

struct Setup {
    label: &'static str,
    rt: tokio::runtime::Runtime,
    cache: Cache<u64, String>,
    tier: SqlTier,
    _dir: Option<std::path::PathBuf>,
}

fn setup(label: &'static str, config: SqlConfig, dir: Option<std::path::PathBuf>) -> Option<Setup> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let tier = match rt.block_on(SqlTier::connect(config)) {
        Ok(t) => t,
        Err(e) => {
            println!("sql bench on {label}: skipped ({e})");
            return None;
        }
    };
    let cache = rt
        .block_on(
            Cache::<u64, String>::builder("bench")
                .no_l1()
                .tier(Arc::new(tier.clone()))
                .serializer(Postcard)
                .options(EntryOptions::new(Duration::from_secs(3600)))
                .build(),
        )
        .expect("cache");
    for k in 0..KEYS {
        rt.block_on(cache.set(k, format!("value-{k}-{}", "x".repeat(64)))).expect("set");
    }
    Some(Setup { label, rt, cache, tier, _dir: dir })
}

/// The same select the tier runs, with the same bound values.
fn raw_select(db: &DatabaseConnection, table: &str, k: u64) -> Statement {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => format!(
            "SELECT frame FROM \"{table}\" WHERE cache = $1 AND namespace = $2 AND key_id = $3 AND expires_at > $4"
        ),
        DbBackend::MySql => {
            format!("SELECT frame FROM `{table}` WHERE cache = ? AND namespace = ? AND key_id = ? AND expires_at > ?")
        }
        _ => {
            format!("SELECT frame FROM \"{table}\" WHERE cache = ? AND namespace = ? AND key_id = ? AND expires_at > ?")
        }
    };
    let now =
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_millis())
            .expect("ms");
    Statement::from_sql_and_values(
        backend,
        sql,
        [
            Value::from(b"bench".to_vec()),
            Value::from(b"default".to_vec()),
            Value::from(k.to_string().into_bytes()),
            Value::from(now),
        ],
    )
}

fn l3_hit(c: &mut Criterion, s: &Setup) {
    let db = strata_cache_sql::raw::connection(&s.tier);
    let table = s.tier.table();
    // Both sides must find the row.
    assert!(s.rt.block_on(s.cache.get(&1)).expect("get").is_some());
    assert!(s.rt.block_on(db.query_one_raw(raw_select(db, table, 1))).expect("raw").is_some());
    let mut g = c.benchmark_group(format!("l3_hit_{}", s.label));
    let mut i = 0u64;
    g.bench_function("strata_cache_get", |b| {
        b.iter(|| {
            i = (i + 7) % KEYS;
            black_box(s.rt.block_on(s.cache.get(&i)).expect("ok").expect("hit"))
        })
    });
    let mut j = 0u64;
    g.bench_function("sea_orm_raw_select", |b| {
        b.iter(|| {
            j = (j + 7) % KEYS;
            black_box(s.rt.block_on(db.query_one_raw(raw_select(db, table, j))).expect("ok").expect("row"))
        })
    });
    g.finish();
    let (mut i, mut j) = (0u64, 0u64);
    let (ours, peer, ratio) = paired_ratio(
        Duration::from_secs(3),
        200,
        || {
            i = (i + 7) % KEYS;
            black_box(s.rt.block_on(s.cache.get(&i)).expect("ok").expect("hit"));
        },
        || {
            j = (j + 7) % KEYS;
            black_box(s.rt.block_on(db.query_one_raw(raw_select(db, table, j))).expect("ok").expect("row"));
        },
    );
    println!(
        "\nl3_hit {}: strata {:.1} us, raw sea-orm select {:.1} us, ratio {ratio:.2}x (target <= 1.2x)\n",
        s.label,
        ours / 1000.0,
        peer / 1000.0
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();

    let dir = std::env::temp_dir().join(format!("strata-sql-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    if let Some(s) = setup("sqlite", SqlConfig::sqlite(dir.join("bench.db")), Some(dir.clone())) {
        l3_hit(&mut c, &s);
    }
    std::fs::remove_dir_all(&dir).ok();

    let pg = std::env::var("STRATA_BENCH_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let table = format!("strata_bench_{:08x}", std::process::id());
    let config = SqlConfig::new(pg).table(table.clone()).connect_timeout(Duration::from_secs(2));
    if let Some(s) = setup("postgres", config, None) {
        l3_hit(&mut c, &s);
        let db = strata_cache_sql::raw::connection(&s.tier);
        let drop_sql = format!("DROP TABLE IF EXISTS {table}, {table}_migrations");
        s.rt.block_on(db.execute_unprepared(&drop_sql)).expect("drop bench tables");
    }
    c.final_summary();
}
