//! `EntitySource` on a real `users` table: loader, writer (one multi-row upsert), delete, and
//! a Cache with L1 + SqlTier + the entity as loader.
#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::DbEnv;
use strata_cache_core::{Cache, CacheStats, EntryOptions, Loader, Postcard, Writer};
use strata_cache_sql::SqlTier;
use strata_cache_sql::raw::EntitySource;
use strata_cache_sql::raw::sea_orm::{self, ActiveModelTrait, ConnectionTrait, EntityTrait, PaginatorTrait, Schema};

mod users {
    use strata_cache_sql::raw::sea_orm;
    use strata_cache_sql::raw::sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub name: String,
        pub email: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn user(id: i32, name: &str) -> users::Model {
    users::Model { id, name: name.into(), email: format!("{name}@example.com") }
}

async fn setup(env: &DbEnv) -> sea_orm::DatabaseConnection {
    let db = env.connect().await;
    let backend = db.get_database_backend();
    db.execute(&Schema::new(backend).create_table_from_entity(users::Entity)).await.unwrap();
    db
}

async fn loader_and_writer(env: DbEnv) {
    let db = setup(&env).await;
    let source: EntitySource<users::Entity, i32, users::Model> = EntitySource::new(db.clone(), |id: &i32| *id);
    assert_eq!(source.load(&1).await.unwrap(), None);
    source.write(&1, &user(1, "ada")).await.unwrap();
    assert_eq!(source.load(&1).await.unwrap(), Some(user(1, "ada")));
    source.write(&1, &user(1, "ada2")).await.unwrap();
    assert_eq!(source.load(&1).await.unwrap(), Some(user(1, "ada2")), "write is an upsert");

    let batch: Vec<(i32, users::Model)> = (1..=1000).map(|i| (i, user(i, &format!("u{i}")))).collect();
    source.write_many(&batch).await.unwrap();
    assert_eq!(users::Entity::find().count(&db).await.unwrap(), 1000);
    assert_eq!(source.load(&1).await.unwrap(), Some(user(1, "u1")));
    assert_eq!(source.load(&777).await.unwrap(), Some(user(777, "u777")));
    source.write_many(&[]).await.unwrap();

    source.delete(&777).await.unwrap();
    assert_eq!(source.load(&777).await.unwrap(), None);

    // A mapped source: the cache holds only the name.
    let names: EntitySource<users::Entity, i32, String> = EntitySource::mapped(
        db.clone(),
        |id: &i32| *id,
        |m: users::Model| m.name,
        |id: &i32, name: &String| sea_orm::IntoActiveModel::into_active_model(user(*id, name)).reset_all(),
    );
    assert_eq!(names.load(&5).await.unwrap().as_deref(), Some("u5"));
    names.write(&5, &"renamed".to_string()).await.unwrap();
    assert_eq!(source.load(&5).await.unwrap().unwrap().name, "renamed");
}

async fn through_a_cache(env: DbEnv) {
    let db = setup(&env).await;
    let tier = SqlTier::connect(env.config()).await.unwrap();
    let source: EntitySource<users::Entity, i32, users::Model> = EntitySource::new(db.clone(), |id: &i32| *id);
    source.write(&42, &user(42, "grace")).await.unwrap();
    let stats = CacheStats::new();
    let cache: Cache<i32, users::Model> = Cache::builder("users")
        .tier(Arc::new(tier.clone()))
        .serializer(Postcard)
        .options(EntryOptions::new(Duration::from_secs(60)))
        .loader(source)
        .observer(stats.clone())
        .build()
        .await
        .unwrap();
    assert_eq!(cache.get_or_load(&42).await.unwrap().as_deref(), Some(&user(42, "grace")));
    assert_eq!(stats.loads(), 1);
    assert_eq!(cache.get_or_load(&42).await.unwrap().as_deref(), Some(&user(42, "grace")));
    assert_eq!(stats.hits("l1"), 1);
    cache.clear_l1();
    assert_eq!(cache.get_or_load(&42).await.unwrap().as_deref(), Some(&user(42, "grace")));
    assert_eq!(stats.hits("sql"), 1, "L3 answers after L1 is cleared");
    assert_eq!(stats.loads(), 1);
    assert_eq!(cache.get_or_load(&404).await.unwrap(), None);
}

macro_rules! on_every_backend {
    ($($name:ident),*) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::common::sqlite()).await } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { if let Some(env) = super::common::postgres().await { super::$name(env).await } } )* }
        mod mysql { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { if let Some(env) = super::common::mysql().await { super::$name(env).await } } )* }
    };
}

on_every_backend!(loader_and_writer, through_a_cache);
