//! `[caches.NAME.security]`: encryption, PII policy and audit log of one cache, checked at load.
//!
//! Secrets (keyrings, hash secrets, chain secrets) are never written in the file: each comes from
//! a file (`*_file`) or an environment variable (`*_env`). A secret written inline is refused with
//! [`SecurityConfigError::InlineSecret`], without echoing it. What the settings name (files,
//! variables) is read when the runtime is built ([`crate::config::CacheSecurity`], feature
//! `security`); the shape is checked here, when the configuration loads.
//!
//! ```toml
//! [caches.people.security]
//! encryption = { key_file = "/etc/strata/people.keys" }        # or key_env = "STRATA_KEY_PEOPLE"
//! pii = { max_ttl = "1h", hash_secret_env = "PEOPLE_HASH_SECRET" }
//! audit = { path = "/var/log/strata/people.audit", keyed_secret_env = "PEOPLE_AUDIT_SECRET" }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use strata_cache_core::options::check_max_duration;
use strata_cache_core::{ConfigError, EntryOptions};

use super::sections::Dur;

/// Security of one cache (`[caches.NAME.security]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// Encrypt values (AES-256-GCM) before they leave the process.
    pub encryption: Option<EncryptionSettings>,
    /// The cache holds personal data: hashed key ids, bounded lifetime, encryption required.
    pub pii: Option<PiiSettings>,
    /// A hash-chained JSON-lines audit log (rejected frames; the sink is also handed to the
    /// application for `SecureCache`).
    pub audit: Option<AuditSettings>,
}

/// Where the encryption keys come from: a keyring (`id:base64key` lines, the current key marked
/// with `*` or the highest id) in a file or in an environment variable — exactly one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSettings {
    /// A keyring file (mode 600).
    pub key_file: Option<PathBuf>,
    /// An environment variable holding the keyring (entries separated by newlines or `,`).
    pub key_env: Option<String>,
}

/// The PII policy: key ids hashed with a secret wherever they are stored, entries kept at most
/// `max_ttl` (TTL + jitter + stale limit), encryption required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiSettings {
    /// The longest an entry may be kept, fresh or stale.
    pub max_ttl: Dur,
    /// A file holding the key-hash secret (at least 16 bytes; a trailing newline is ignored).
    pub hash_secret_file: Option<PathBuf>,
    /// An environment variable holding the key-hash secret.
    pub hash_secret_env: Option<String>,
}

/// The audit log: a hash-chained JSON-lines file, keyed (HMAC) when a secret is named.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// The log file (created if missing, appended to, its chain continued).
    pub path: PathBuf,
    /// A file holding the chain secret (optional; at least 16 bytes).
    pub keyed_secret_file: Option<PathBuf>,
    /// An environment variable holding the chain secret (optional).
    pub keyed_secret_env: Option<String>,
}

/// A security setting is wrong. Messages name files and variables, never secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityConfigError {
    /// A secret was written into the configuration itself.
    #[error(
        "secrets are never written in the configuration (the value is not shown); use `{stem}_file = \"PATH\"` or `{stem}_env = \"VARIABLE\"`"
    )]
    InlineSecret {
        /// The setting.
        field: String,
        /// The secret's name (`key`, `hash_secret`, `keyed_secret`).
        stem: &'static str,
    },
    /// Neither or both of `*_file` and `*_env` were given.
    #[error("set exactly one of `{stem}_file` and `{stem}_env`")]
    SecretSource {
        /// The section.
        field: String,
        /// The secret's name.
        stem: &'static str,
    },
    /// A file could not be read.
    #[error("cannot read `{path}`: {message}")]
    File {
        /// The setting.
        field: String,
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// A named environment variable is not set (or not UTF-8).
    #[error("environment variable `{var}` is not set or not valid UTF-8")]
    EnvMissing {
        /// The setting.
        field: String,
        /// The variable.
        var: String,
    },
    /// Not a usable environment variable name.
    #[error("{var:?} is not an environment variable name (ASCII letters, digits and `_`)")]
    EnvName {
        /// The setting.
        field: String,
        /// The name given.
        var: String,
    },
    /// Key material is unusable (wrong length, unparsable entry, no current key).
    #[error("{message}")]
    Key {
        /// The setting.
        field: String,
        /// What is wrong (never the key).
        message: String,
    },
    /// A secret is unusable (too short, empty).
    #[error("{message}")]
    Secret {
        /// The setting.
        field: String,
        /// What is wrong (never the secret).
        message: String,
    },
    /// A lifetime is zero, too long, or exceeds the PII limit.
    #[error("{message}")]
    Ttl {
        /// The setting.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A PII cache without encryption.
    #[error("a PII cache must encrypt: add `encryption = {{ key_file = \"...\" }}` (or `key_env`)")]
    PiiWithoutEncryption {
        /// The section.
        field: String,
    },
    /// The audit log could not be opened.
    #[error("{message}")]
    Audit {
        /// The setting.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// This build of `strata` lacks the `security` feature.
    #[error("this build lacks the `security` feature of `strata`")]
    FeatureMissing {
        /// The section.
        field: String,
    },
}

impl SecurityConfigError {
    /// The setting that is wrong (`caches.NAME.security....`).
    pub fn field(&self) -> &str {
        match self {
            Self::InlineSecret { field, .. }
            | Self::SecretSource { field, .. }
            | Self::File { field, .. }
            | Self::EnvMissing { field, .. }
            | Self::EnvName { field, .. }
            | Self::Key { field, .. }
            | Self::Secret { field, .. }
            | Self::Ttl { field, .. }
            | Self::PiiWithoutEncryption { field }
            | Self::Audit { field, .. }
            | Self::FeatureMissing { field } => field,
        }
    }
}

impl From<SecurityConfigError> for ConfigError {
    fn from(e: SecurityConfigError) -> Self {
        ConfigError::new(e.field(), e.to_string())
    }
}

/// Where one secret comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SecretSource<'a> {
    /// A file.
    File(&'a std::path::Path),
    /// An environment variable.
    Env(&'a str),
}

/// The one source of a secret, checked: exactly one of `file` and `env` when `required`, at
/// most one otherwise.
pub(crate) fn secret_source<'a>(
    field: &str,
    stem: &'static str,
    file: Option<&'a PathBuf>,
    env: Option<&'a String>,
    required: bool,
) -> Result<Option<SecretSource<'a>>, SecurityConfigError> {
    match (file, env) {
        (Some(_), Some(_)) => Err(SecurityConfigError::SecretSource { field: field.to_owned(), stem }),
        (None, None) if required => Err(SecurityConfigError::SecretSource { field: field.to_owned(), stem }),
        (None, None) => Ok(None),
        (Some(f), None) if f.as_os_str().is_empty() => Err(SecurityConfigError::File {
            field: format!("{field}.{stem}_file"),
            path: String::new(),
            message: "the path is empty".into(),
        }),
        (Some(f), None) => Ok(Some(SecretSource::File(f))),
        (None, Some(v)) => {
            let ok = !v.is_empty()
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !v.as_bytes()[0].is_ascii_digit();
            if ok {
                Ok(Some(SecretSource::Env(v)))
            } else {
                Err(SecurityConfigError::EnvName { field: format!("{field}.{stem}_env"), var: v.clone() })
            }
        }
    }
}

impl SecuritySettings {
    /// Checks the shape of cache `cache`'s security settings against its entry `options`
    /// (nothing is read: files and variables are read when the runtime is built).
    pub fn validate(&self, cache: &str, options: &EntryOptions) -> Result<(), SecurityConfigError> {
        let base = format!("caches.{cache}.security");
        if let Some(e) = &self.encryption {
            let field = format!("{base}.encryption");
            secret_source(&field, "key", e.key_file.as_ref(), e.key_env.as_ref(), true)?;
        }
        if let Some(p) = &self.pii {
            let field = format!("{base}.pii");
            secret_source(&field, "hash_secret", p.hash_secret_file.as_ref(), p.hash_secret_env.as_ref(), true)?;
            let ttl_field = format!("{field}.max_ttl");
            if p.max_ttl.0.is_zero() {
                return Err(SecurityConfigError::Ttl { field: ttl_field, message: "must be greater than zero".into() });
            }
            check_max_duration(&ttl_field, p.max_ttl.0)
                .map_err(|e| SecurityConfigError::Ttl { field: ttl_field.clone(), message: e.message })?;
            if self.encryption.is_none() {
                return Err(SecurityConfigError::PiiWithoutEncryption { field });
            }
            let lifetime = lifetime(options);
            if lifetime > p.max_ttl.0 {
                return Err(SecurityConfigError::Ttl {
                    field: ttl_field,
                    message: format!(
                        "the cache keeps entries up to {} (ttl + jitter + stale_limit), over the PII limit of {}",
                        humantime::format_duration(lifetime),
                        humantime::format_duration(p.max_ttl.0)
                    ),
                });
            }
        }
        if let Some(a) = &self.audit {
            let field = format!("{base}.audit");
            if a.path.as_os_str().is_empty() {
                return Err(SecurityConfigError::Audit {
                    field: format!("{field}.path"),
                    message: "the path is empty".into(),
                });
            }
            secret_source(&field, "keyed_secret", a.keyed_secret_file.as_ref(), a.keyed_secret_env.as_ref(), false)?;
        }
        Ok(())
    }
}

/// The longest an entry written with `options` may be served (the rule `PiiPolicy` applies).
fn lifetime(options: &EntryOptions) -> Duration {
    let positive = options.ttl.saturating_add(options.jitter).saturating_add(options.stale_limit);
    positive.max(options.negative_ttl.unwrap_or(Duration::ZERO))
}

/// Names that would hold a secret inline, per sub-section, with the `*_file`/`*_env` stem to
/// use instead.
const INLINE: [(&str, &[&str], &str); 4] = [
    ("encryption", &["key", "keys", "keyring", "secret", "material"], "key"),
    ("pii", &["hash_secret", "secret", "key"], "hash_secret"),
    ("audit", &["keyed_secret", "secret", "key"], "keyed_secret"),
    ("", &["key", "keys", "keyring", "secret", "password", "token"], "key"),
];

/// Refuses secrets written inline in any `[caches.NAME.security]` (before the file is
/// deserialized, so that no error can echo one).
pub(crate) fn reject_inline_secrets(table: &toml::Table) -> Result<(), SecurityConfigError> {
    let Some(caches) = table.get("caches").and_then(toml::Value::as_table) else { return Ok(()) };
    for (name, cache) in caches {
        let Some(sec) = cache.get("security").and_then(toml::Value::as_table) else { continue };
        for (section, names, stem) in INLINE {
            let (t, base) = if section.is_empty() {
                (Some(sec), format!("caches.{name}.security"))
            } else {
                (sec.get(section).and_then(toml::Value::as_table), format!("caches.{name}.security.{section}"))
            };
            let Some(t) = t else { continue };
            if let Some(found) = names.iter().find(|n| t.contains_key(**n)) {
                return Err(SecurityConfigError::InlineSecret { field: format!("{base}.{found}"), stem });
            }
        }
    }
    Ok(())
}

/// The environment variables that `[caches.*.security]` in `table` names as secret sources.
pub(crate) fn secret_env_vars(table: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    let Some(caches) = table.get("caches").and_then(toml::Value::as_table) else { return out };
    for cache in caches.values() {
        let Some(sec) = cache.get("security").and_then(toml::Value::as_table) else { continue };
        for (section, var) in [("encryption", "key_env"), ("pii", "hash_secret_env"), ("audit", "keyed_secret_env")] {
            if let Some(v) = sec.get(section).and_then(|s| s.get(var)).and_then(toml::Value::as_str) {
                out.push(v.to_owned());
            }
        }
    }
    out
}

/// Whether environment override `var` sets the name of a secret variable
/// (`STRATA_CACHES__<NAME>__SECURITY__<SECTION>__<X>_ENV`).
pub(crate) fn names_secret_var(var: &str) -> bool {
    var.starts_with("STRATA_CACHES__") && var.contains("__SECURITY__") && var.ends_with("_ENV")
}
