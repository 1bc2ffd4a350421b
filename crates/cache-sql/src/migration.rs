//! The schema of the cache table, as one sea-orm migration.
//!
//! ```text
//! <table> (
//!   cache      varbinary(64)   -- the cache's name
//!   namespace  varbinary(64)
//!   key_id     varbinary(2048) -- the key id (binary, so that every backend compares exactly)
//!   frame      blob            -- the encoded frame (bytea on PostgreSQL, LONGBLOB on MySQL)
//!   expires_at bigint          -- hard expiry, ms since the Unix epoch
//!   version    bigint          -- last-writer-wins version
//!   tags       blob            -- `|t1|t2|` with `%` and `|` percent-encoded in each tag
//!   PRIMARY KEY (cache, namespace, key_id)
//! )
//! INDEX <table>_expires_at (expires_at)  -- for the sweeper
//! ```
//!
//! Applied migrations are recorded in `<table>_migrations` (not `seaql_migrations`, so they
//! never mix with an application's own sea-orm migrations, and several cache tables can live in
//! one database).

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;
use sea_orm_migration::{MigrationTrait, MigratorTraitSelf};

/// The longest key id the table stores, in bytes. Longer ids are refused with
/// `TierErrorKind::InvalidRequest` (PostgreSQL and MySQL cap the size of an index entry).
pub const MAX_STORED_KEY_ID: usize = 2048;

/// The table that records the migrations applied to cache table `table`: `<table>_migrations`.
pub fn migration_table(table: &str) -> String {
    format!("{table}_migrations")
}

/// The migrator: one migration creating the table named at construction.
#[derive(Debug, Clone)]
pub struct Migrator {
    table: String,
}

impl Migrator {
    /// A migrator for `table` (validate the name first; see
    /// [`validate_table_name`](crate::validate_table_name)).
    pub fn new(table: impl Into<String>) -> Self {
        Self { table: table.into() }
    }
}

impl MigratorTraitSelf for Migrator {
    fn migrations(&self) -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateCacheTable { table: self.table.clone() })]
    }

    fn migration_table_name(&self) -> sea_orm::DynIden {
        Alias::new(migration_table(&self.table)).into_iden()
    }
}

/// Creates the cache table and its expiry index.
struct CreateCacheTable {
    table: String,
}

impl MigrationName for CreateCacheTable {
    fn name(&self) -> &str {
        "m0001_create_cache_table"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateCacheTable {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let big_blob = |c: &mut ColumnDef| {
            if backend == DbBackend::MySql {
                c.custom(Alias::new("LONGBLOB"));
            } else {
                c.blob();
            }
        };
        let mut frame = ColumnDef::new(Alias::new("frame"));
        big_blob(&mut frame);
        let mut tags = ColumnDef::new(Alias::new("tags"));
        big_blob(&mut tags);
        let table = Alias::new(self.table.as_str());
        manager
            .create_table(
                Table::create()
                    .table(table.clone())
                    .if_not_exists()
                    .col(ColumnDef::new(Alias::new("cache")).var_binary(64).not_null())
                    .col(ColumnDef::new(Alias::new("namespace")).var_binary(64).not_null())
                    .col(ColumnDef::new(Alias::new("key_id")).var_binary(MAX_STORED_KEY_ID as u32).not_null())
                    .col(frame.not_null())
                    .col(ColumnDef::new(Alias::new("expires_at")).big_integer().not_null())
                    .col(ColumnDef::new(Alias::new("version")).big_integer().not_null())
                    .col(tags.not_null())
                    .primary_key(
                        Index::create().col(Alias::new("cache")).col(Alias::new("namespace")).col(Alias::new("key_id")),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name(format!("{}_expires_at", self.table))
                    .table(table)
                    .col(Alias::new("expires_at"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Alias::new(self.table.as_str())).if_exists().to_owned()).await
    }
}
