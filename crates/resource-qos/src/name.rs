//! Validation of the names callers pass: namespaces, principals, priority classes, quotas.
//!
//! Names end up in audit records, observer events, error messages and tracing fields. A name is
//! accepted when it is non-empty, at most [`MAX_NAME_LEN`] bytes long and free of control
//! characters (so it cannot forge log lines or hide text in a terminal); any other Unicode is
//! fine. Errors describe what is wrong without echoing the name.

use crate::QosError;

/// Longest accepted name, in bytes (the Kubernetes limit for a DNS subdomain name).
pub const MAX_NAME_LEN: usize = 253;

/// Why `name` is not acceptable, if it is not.
pub(crate) fn problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("is longer than 253 bytes")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    }
}

/// Checks a name given with a request.
pub(crate) fn check(what: &'static str, name: &str) -> Result<(), QosError> {
    match problem(name) {
        Some(reason) => Err(QosError::InvalidName { what, reason }),
        None => Ok(()),
    }
}

/// Checks a name given in the configuration.
pub(crate) fn check_config(what: &str, name: &str) -> Result<(), QosError> {
    match problem(name) {
        Some(reason) => Err(QosError::InvalidConfig(format!("{what} name {reason}"))),
        None => Ok(()),
    }
}

/// A bounded, escaped rendering of a refused name for audit records.
pub(crate) fn sanitized(name: &str) -> String {
    let mut out: String = name.chars().take(64).flat_map(char::escape_debug).collect();
    if name.chars().nth(64).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(problem("ml"), None);
        assert_eq!(problem("équipe-données/ü"), None);
        assert_eq!(problem(&"x".repeat(MAX_NAME_LEN)), None);
        assert!(problem("").is_some());
        assert!(problem(&"x".repeat(MAX_NAME_LEN + 1)).is_some());
        assert!(problem(&"é".repeat(127)).is_some(), "254 bytes");
        for bad in ["a\nb", "\u{0}", "x\u{1b}[31m", "tab\t", "\u{7f}", "\u{85}"] {
            assert!(problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(sanitized("a\nb"), "a\\nb");
        assert_eq!(sanitized(&"y".repeat(100)).chars().count(), 65);
    }
}
