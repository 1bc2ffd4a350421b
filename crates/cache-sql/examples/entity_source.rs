//! A `users` table on SQLite as the source of truth, read through a cache with L1 and the SQL
//! L3 tier (a separate cache table in the same database file).
//!
//! ```text
//! cargo run -p strata-cache-sql --example entity_source
//! ```

use std::sync::Arc;
use std::time::Duration;

use strata_cache_core::{Cache, CacheStats, EntryOptions, Postcard, Writer};
use strata_cache_sql::raw::EntitySource;
use strata_cache_sql::raw::sea_orm::{ConnectionTrait, Database, Schema};
use strata_cache_sql::{SqlConfig, SqlTier};

/// The application's entity.
#[allow(unreachable_pub)]
mod users {
    use strata_cache_sql::raw::sea_orm;
    use strata_cache_sql::raw::sea_orm::entity::prelude::*;

    /// A user row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        /// Display name.
        pub name: String,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[tokio::main]
async fn main() -> Result<(), strata_cache_core::BoxError> {
    let dir = std::env::temp_dir().join(format!("strata-entity-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = SqlConfig::sqlite(dir.join("app.db"));

    // The application's own connection and table.
    let db = Database::connect(config.url()).await?;
    let backend = db.get_database_backend();
    db.execute(&Schema::new(backend).create_table_from_entity(users::Entity).if_not_exists().to_owned()).await?;

    // The source of truth and the L3 tier share the database file.
    let source: EntitySource<users::Entity, i32, users::Model> = EntitySource::new(db.clone(), |id: &i32| *id);
    source
        .write_many(&[
            (1, users::Model { id: 1, name: "Ada".into() }),
            (2, users::Model { id: 2, name: "Grace".into() }),
        ])
        .await?;
    let tier = SqlTier::connect(config).await?;
    let _sweeper = tier.spawn_sweeper(Duration::from_secs(60), 1000)?;

    let stats = CacheStats::new();
    let cache: Cache<i32, users::Model> = Cache::builder("users")
        .tier(Arc::new(tier))
        .serializer(Postcard)
        .options(EntryOptions::new(Duration::from_secs(300)))
        .loader(source)
        .observer(stats.clone())
        .build()
        .await?;

    let ada = cache.get_or_load(&1).await?; // loader (the users table), then L1 + L3
    let again = cache.get_or_load(&1).await?; // L1
    cache.clear_l1();
    let from_l3 = cache.get_or_load(&1).await?; // L3
    let missing = cache.get_or_load(&99).await?;
    println!("first:  {ada:?}\nagain:  {again:?}\nfrom L3: {from_l3:?}\nmissing: {missing:?}");
    println!("loads {}, L1 hits {}, SQL hits {}", stats.loads(), stats.hits("l1"), stats.hits("sql"));
    assert_eq!((stats.loads(), stats.hits("l1"), stats.hits("sql")), (2, 1, 1));

    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
