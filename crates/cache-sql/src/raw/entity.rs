//! [`EntitySource`]: a sea-orm entity as the cache's source of truth ([`Loader`] and
//! [`Writer`]).

use std::sync::Arc;

use async_trait::async_trait;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, DatabaseConnection, DbBackend, EntityTrait, IdenStatic, IntoActiveModel, Iterable,
    PrimaryKeyToColumn, PrimaryKeyTrait,
};
use strata_cache_core::{BoxError, Loader, Writer};

/// The primary key value type of entity `E`.
pub type PrimaryKeyOf<E> = <<E as EntityTrait>::PrimaryKey as PrimaryKeyTrait>::ValueType;

type KeyFn<E, K> = Arc<dyn Fn(&K) -> PrimaryKeyOf<E> + Send + Sync>;
type FromModelFn<E, V> = Arc<dyn Fn(<E as EntityTrait>::Model) -> V + Send + Sync>;
type ToModelFn<E, K, V> = Arc<dyn Fn(&K, &V) -> <E as EntityTrait>::ActiveModel + Send + Sync>;

/// Loads and writes cache values from a sea-orm entity: `load` is `find_by_id`, `write` an
/// upsert on the primary key, `write_many` one multi-row upsert (per chunk under the backend's
/// parameter limit), `delete` is `delete_by_id`.
///
/// Closures map the cache key to the primary key and (with [`EntitySource::mapped`]) the model
/// to the cached value and back. [`EntitySource::new`] caches the model itself.
pub struct EntitySource<E: EntityTrait, K, V> {
    db: DatabaseConnection,
    key: KeyFn<E, K>,
    from_model: FromModelFn<E, V>,
    to_model: ToModelFn<E, K, V>,
}

impl<E: EntityTrait, K, V> Clone for EntitySource<E, K, V> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            key: self.key.clone(),
            from_model: self.from_model.clone(),
            to_model: self.to_model.clone(),
        }
    }
}

impl<E: EntityTrait, K, V> std::fmt::Debug for EntitySource<E, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntitySource").field("table", &E::default().table_name()).finish()
    }
}

impl<E, K> EntitySource<E, K, E::Model>
where
    E: EntityTrait,
    E::Model: IntoActiveModel<E::ActiveModel> + Clone,
{
    /// A source that caches `E::Model`; `key` maps the cache key to the primary key.
    pub fn new(db: DatabaseConnection, key: impl Fn(&K) -> PrimaryKeyOf<E> + Send + Sync + 'static) -> Self {
        Self::mapped(db, key, |m| m, |_, m: &E::Model| m.clone().into_active_model())
    }
}

impl<E: EntityTrait, K, V> EntitySource<E, K, V> {
    /// A source that caches `V`: `from_model` turns a row into the value, `to_model` a value
    /// (and its key) into the active model to upsert (every column `Set` or `Unchanged`).
    pub fn mapped(
        db: DatabaseConnection,
        key: impl Fn(&K) -> PrimaryKeyOf<E> + Send + Sync + 'static,
        from_model: impl Fn(E::Model) -> V + Send + Sync + 'static,
        to_model: impl Fn(&K, &V) -> E::ActiveModel + Send + Sync + 'static,
    ) -> Self {
        Self { db, key: Arc::new(key), from_model: Arc::new(from_model), to_model: Arc::new(to_model) }
    }

    /// The connection.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// `ON CONFLICT (pk) DO UPDATE SET <every other column>` (`ON DUPLICATE KEY UPDATE` on
    /// MySQL); `DO NOTHING` when every column is in the key.
    fn on_conflict() -> OnConflict {
        let pk: Vec<E::Column> = E::PrimaryKey::iter().map(|p| p.into_column()).collect();
        let others: Vec<E::Column> =
            E::Column::iter().filter(|c| !pk.iter().any(|p| p.as_str() == c.as_str())).collect();
        let mut oc = OnConflict::columns(pk);
        if others.is_empty() {
            oc.do_nothing();
        } else {
            oc.update_columns(others);
        }
        oc
    }

    async fn upsert(&self, models: Vec<E::ActiveModel>) -> Result<(), BoxError> {
        if models.is_empty() {
            return Ok(());
        }
        let limit = match self.db.get_database_backend() {
            DbBackend::Sqlite => 32_766,
            _ => 65_535,
        };
        let per_chunk = (limit / E::Column::iter().count().max(1)).max(1);
        let mut models = models.into_iter().peekable();
        while models.peek().is_some() {
            let chunk: Vec<E::ActiveModel> = models.by_ref().take(per_chunk).collect();
            E::insert_many(chunk).on_conflict(Self::on_conflict()).exec_without_returning(&self.db).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<E, K, V> Loader<K, V> for EntitySource<E, K, V>
where
    E: EntityTrait,
    E::Model: Sync,
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    async fn load(&self, key: &K) -> Result<Option<V>, BoxError> {
        let pk = (self.key)(key);
        Ok(E::find_by_id(pk).one(&self.db).await?.map(|m| (self.from_model)(m)))
    }
}

#[async_trait]
impl<E, K, V> Writer<K, V> for EntitySource<E, K, V>
where
    E: EntityTrait,
    E::Model: Sync,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    async fn write(&self, key: &K, value: &V) -> Result<(), BoxError> {
        self.upsert(vec![(self.to_model)(key, value)]).await
    }

    async fn write_many(&self, items: &[(K, V)]) -> Result<(), BoxError> {
        self.upsert(items.iter().map(|(k, v)| (self.to_model)(k, v)).collect()).await
    }

    async fn delete(&self, key: &K) -> Result<(), BoxError> {
        E::delete_by_id((self.key)(key)).exec(&self.db).await?;
        Ok(())
    }
}
