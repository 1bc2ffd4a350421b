//! # strata-security
//!
//! zstd compression and AES-256-GCM encryption codecs, key rotation, access control, audit log, PII policy.
//!
//! **Status: not implemented yet** — this crate is a placeholder in the workspace layout and
//! exports nothing usable; the work is tracked in issue #5.
//!
//! ```
//! assert_eq!(strata_security::STATUS, "planned");
//! ```

/// Implementation status of this crate.
pub const STATUS: &str = "planned";
