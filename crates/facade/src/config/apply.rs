//! `[caches.NAME.security]` put to work: keyrings, secrets and audit logs read from the files
//! and environment variables the settings name, then installed on the cache's builder by
//! [`Strata::cache`](crate::Strata::cache).
//!
//! A runtime resolves every cache's security once, when it is built: `connect()` fails with the
//! first error; `build()` logs it and the cache fails closed (its writes fail, its remote reads
//! miss) rather than run without the protection the configuration asked for.

use std::collections::BTreeMap;
#[cfg(feature = "security")]
use std::sync::Arc;

use strata_cache_core::{CacheBuilder, CacheKey};

use super::StrataConfig;
use super::security::SecurityConfigError;

#[cfg(feature = "security")]
pub use resolved::CacheSecurity;

#[cfg(feature = "security")]
type Resolved = Arc<CacheSecurity>;
/// Without the `security` feature a configuration with a security section does not load.
#[cfg(not(feature = "security"))]
type Resolved = std::convert::Infallible;

/// Every configured cache's resolved security (or why it could not be resolved).
#[derive(Default)]
pub(crate) struct SecurityState {
    per_cache: BTreeMap<String, Result<Resolved, SecurityConfigError>>,
}

impl SecurityState {
    /// Resolves every `[caches.NAME.security]` of `config` from the process environment.
    pub(crate) fn resolve(config: &StrataConfig) -> Self {
        let mut per_cache = BTreeMap::new();
        for (name, c) in &config.caches {
            let Some(s) = &c.security else { continue };
            #[cfg(feature = "security")]
            let r = CacheSecurity::resolve(name, s).map(Arc::new);
            #[cfg(not(feature = "security"))]
            let r = {
                let _ = s;
                Err(SecurityConfigError::FeatureMissing { field: format!("caches.{name}.security") })
            };
            if let Err(e) = &r {
                tracing::error!(cache = %name, field = e.field(), error = %e, "cache security not available; the cache fails closed");
            }
            per_cache.insert(name.clone(), r);
        }
        Self { per_cache }
    }

    /// The first error, if any.
    pub(crate) fn first_error(&self) -> Option<&SecurityConfigError> {
        self.per_cache.values().find_map(|r| r.as_ref().err())
    }

    /// Cache `name`'s resolved security, if configured and resolved.
    #[cfg(feature = "security")]
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<CacheSecurity>> {
        self.per_cache.get(name).and_then(|r| r.as_ref().ok())
    }

    /// `b` with cache `name`'s security installed (or failing closed).
    pub(crate) fn apply<K, V>(&self, name: &str, b: CacheBuilder<K, V>) -> CacheBuilder<K, V>
    where
        K: CacheKey,
        V: Send + Sync + 'static,
    {
        match self.per_cache.get(name) {
            None => b,
            #[cfg(feature = "security")]
            Some(Ok(s)) => s.apply(b),
            #[cfg(not(feature = "security"))]
            Some(Ok(never)) => match *never {},
            #[cfg(feature = "security")]
            Some(Err(e)) => resolved::fail_closed(b, format!("{}: {e}", e.field())),
            #[cfg(not(feature = "security"))]
            Some(Err(_)) => b,
        }
    }
}

#[cfg(feature = "security")]
mod resolved {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use strata_cache_core::{CacheBuilder, CacheKey};
    use strata_security::{
        AesGcmCodec, AuditObserver, AuditSink, DataKey, JsonLinesAuditSink, KeyError, KeyId, KeyProvider, Keyring,
        PiiPolicy,
    };

    use crate::config::security::{SecretSource, SecurityConfigError, SecuritySettings, secret_source};

    /// One cache's security, resolved from `[caches.NAME.security]`: the encryption codec over
    /// the named keyring, the PII policy, the audit sink. [`Strata::cache`](crate::Strata::cache)
    /// installs it (codec, key-id hasher, audit observer); [`Strata::security`](crate::Strata::security)
    /// hands it to the application (e.g. the audit sink for a `SecureCache`).
    pub struct CacheSecurity {
        codec: Option<Arc<AesGcmCodec>>,
        pii: Option<Arc<PiiPolicy>>,
        audit: Option<Arc<dyn AuditSink>>,
        observer: Option<Arc<AuditObserver>>,
    }

    impl std::fmt::Debug for CacheSecurity {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("CacheSecurity")
                .field("encrypted", &self.codec.is_some())
                .field("pii", &self.pii.as_ref().map(|p| p.max_ttl))
                .field("audited", &self.audit.is_some())
                .finish()
        }
    }

    impl CacheSecurity {
        /// Resolves cache `cache`'s settings, reading named variables from the process
        /// environment.
        pub fn resolve(cache: &str, settings: &SecuritySettings) -> Result<Self, SecurityConfigError> {
            Self::resolve_with(cache, settings, &|var| std::env::var(var).ok())
        }

        /// Resolves cache `cache`'s settings, reading named variables through `env`.
        pub fn resolve_with(
            cache: &str,
            settings: &SecuritySettings,
            env: &dyn Fn(&str) -> Option<String>,
        ) -> Result<Self, SecurityConfigError> {
            let base = format!("caches.{cache}.security");
            let codec = match &settings.encryption {
                None => None,
                Some(e) => {
                    let field = format!("{base}.encryption");
                    let ring = match secret_source(&field, "key", e.key_file.as_ref(), e.key_env.as_ref(), true)? {
                        Some(SecretSource::File(p)) => Keyring::from_file(p).map_err(|e| key_error(&field, e))?,
                        Some(SecretSource::Env(var)) => {
                            let text = read_env(&field, var, env)?;
                            let ring = Keyring::parse(&text, &format!("env:{var}"));
                            wipe(text.into_bytes());
                            ring.map_err(|e| key_error(&field, e))?
                        }
                        None => unreachable_source(&field, "key")?,
                    };
                    Some(Arc::new(AesGcmCodec::new(Arc::new(ring)).map_err(|e| key_error(&field, e))?))
                }
            };
            let pii = match &settings.pii {
                None => None,
                Some(p) => {
                    let field = format!("{base}.pii");
                    let source = secret_source(
                        &field,
                        "hash_secret",
                        p.hash_secret_file.as_ref(),
                        p.hash_secret_env.as_ref(),
                        true,
                    )?;
                    let secret = read_secret(&field, "hash_secret", source, env)?;
                    let policy = policy(&field, p.max_ttl.0, &secret);
                    wipe(secret);
                    Some(Arc::new(policy?))
                }
            };
            let audit: Option<Arc<dyn AuditSink>> = match &settings.audit {
                None => None,
                Some(a) => {
                    let field = format!("{base}.audit");
                    let source = secret_source(
                        &field,
                        "keyed_secret",
                        a.keyed_secret_file.as_ref(),
                        a.keyed_secret_env.as_ref(),
                        false,
                    )?;
                    let sink = match source {
                        None => JsonLinesAuditSink::open(&a.path),
                        s => {
                            let secret = read_secret(&field, "keyed_secret", s, env)?;
                            let sink = JsonLinesAuditSink::open_keyed(&a.path, &secret);
                            wipe(secret);
                            sink
                        }
                    }
                    .map_err(|e| SecurityConfigError::Audit {
                        field: format!("{field}.path"),
                        message: e.to_string(),
                    })?;
                    Some(Arc::new(sink))
                }
            };
            let observer = audit.clone().map(AuditObserver::new);
            Ok(Self { codec, pii, audit, observer })
        }

        /// Installs the encryption codec, the PII key-id hasher and the audit observer on `b`.
        pub fn apply<K, V>(&self, mut b: CacheBuilder<K, V>) -> CacheBuilder<K, V>
        where
            K: CacheKey,
            V: Send + Sync + 'static,
        {
            if let Some(c) = &self.codec {
                b = b.codec(c.clone());
            }
            if let Some(p) = &self.pii {
                b = b.key_id_hasher(p.key_id_hasher());
            }
            if let Some(o) = &self.observer {
                b = b.observer(o.clone());
            }
            b
        }

        /// The encryption codec, when `encryption` is configured.
        pub fn codec(&self) -> Option<&Arc<AesGcmCodec>> {
            self.codec.as_ref()
        }

        /// The PII policy, when `pii` is configured (check a built cache with
        /// [`PiiPolicy::check`] after changing its options in code).
        pub fn pii_policy(&self) -> Option<&Arc<PiiPolicy>> {
            self.pii.as_ref()
        }

        /// The audit sink, when `audit` is configured (records of rejected frames go there;
        /// give it to a `SecureCache` to audit every call).
        pub fn audit_sink(&self) -> Option<&Arc<dyn AuditSink>> {
            self.audit.as_ref()
        }

        /// The audit observer installed on the cache (its failure count).
        pub fn audit_observer(&self) -> Option<&Arc<AuditObserver>> {
            self.observer.as_ref()
        }
    }

    fn policy(field: &str, max_ttl: Duration, secret: &[u8]) -> Result<PiiPolicy, SecurityConfigError> {
        PiiPolicy::new(max_ttl, secret).map_err(|e| SecurityConfigError::Secret {
            field: format!("{field}.hash_secret"),
            message: format!("the key-hash secret is unusable: {}", e.message),
        })
    }

    fn key_error(field: &str, e: KeyError) -> SecurityConfigError {
        match e {
            KeyError::Io { path, message } => {
                SecurityConfigError::File { field: format!("{field}.key_file"), path, message }
            }
            other => SecurityConfigError::Key { field: field.to_owned(), message: other.to_string() },
        }
    }

    fn unreachable_source<T>(field: &str, stem: &'static str) -> Result<T, SecurityConfigError> {
        Err(SecurityConfigError::SecretSource { field: field.to_owned(), stem })
    }

    fn read_env(field: &str, var: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, SecurityConfigError> {
        env(var).ok_or_else(|| SecurityConfigError::EnvMissing { field: field.to_owned(), var: var.to_owned() })
    }

    /// A secret's bytes from its file or variable, without a trailing newline.
    fn read_secret(
        field: &str,
        stem: &'static str,
        source: Option<SecretSource<'_>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<u8>, SecurityConfigError> {
        let mut bytes = match source {
            Some(SecretSource::File(p)) => read_file(&format!("{field}.{stem}_file"), p)?,
            Some(SecretSource::Env(var)) => read_env(field, var, env)?.into_bytes(),
            None => unreachable_source(field, stem)?,
        };
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(SecurityConfigError::Secret { field: field.to_owned(), message: "the secret is empty".into() });
        }
        Ok(bytes)
    }

    fn read_file(field: &str, path: &Path) -> Result<Vec<u8>, SecurityConfigError> {
        std::fs::read(path).map_err(|e| SecurityConfigError::File {
            field: field.to_owned(),
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Stands in for the keys of a cache whose security could not be resolved: nothing can be
    /// encrypted (writes fail with the reason) or decrypted (remote copies are misses).
    struct Unavailable(String);

    impl KeyProvider for Unavailable {
        fn current(&self, namespace: &str) -> Result<Arc<DataKey>, KeyError> {
            Err(KeyError::NoCurrentKey { namespace: format!("{namespace} (security unavailable: {})", self.0) })
        }

        fn get(&self, _: &str, _: KeyId) -> Option<Arc<DataKey>> {
            None
        }

        fn validate(&self) -> Result<(), KeyError> {
            Ok(())
        }
    }

    /// `b` with an encryption codec that refuses everything, for `reason`.
    pub(super) fn fail_closed<K, V>(b: CacheBuilder<K, V>, reason: String) -> CacheBuilder<K, V>
    where
        K: CacheKey,
        V: Send + Sync + 'static,
    {
        match AesGcmCodec::new(Arc::new(Unavailable(reason))) {
            Ok(c) => b.codec(Arc::new(c)),
            // `validate` cannot fail: unreachable, but never build an unprotected cache.
            Err(e) => b.max_value_bytes(0).namespace(format!("unavailable: {e}")),
        }
    }

    /// Overwrites a copy of a secret before it is freed (best effort).
    fn wipe(mut bytes: Vec<u8>) {
        bytes.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&bytes);
    }
}
