//! Where settings come from: the configuration file (bounded, regular files only), TOML syntax
//! errors without excerpts of the file, and `STRATA_*` environment overrides.

use std::path::Path;

use strata_cache_core::ConfigError;
use strata_cache_core::redact::redact_urls;

use super::SECTIONS;

/// A TOML syntax error with its position but without the excerpt of the file that the `toml`
/// crate's `Display` adds: the offending line may hold a secret (a token, a password in a URL).
pub(super) fn toml_syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    // The message may quote a value (`invalid type: integer `123...``): keep short quotes
    // (expected punctuation such as `=` or `]]`), hide longer ones.
    let mut message = String::new();
    for (i, part) in e.message().trim().split('`').enumerate() {
        if i > 0 {
            message.push('`');
        }
        message.push_str(if i % 2 == 1 && part.chars().count() > 3 { "…" } else { part });
    }
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let message = redact_urls(&message);
            ConfigError::new("toml", format!("syntax error at line {line}, column {column}: {message}"))
        }
        None => ConfigError::new("toml", format!("syntax error: {}", redact_urls(&message))),
    }
}

/// The largest configuration file [`StrataConfig::load`](super::StrataConfig::load) reads, in bytes (1 MiB).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads a configuration file: a regular file (or a link to one) of at most
/// [`MAX_CONFIG_BYTES`], in UTF-8. Devices (`/dev/zero`), FIFOs, sockets and directories are
/// refused before they are opened (opening a FIFO would block), and the read itself is
/// bounded, so a file that grows while it is read is refused too.
pub(super) fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let shown = path.display();
    let err = |msg: String| ConfigError::new("STRATA_CONFIG", msg);
    let check = |meta: &std::fs::Metadata| -> Result<(), ConfigError> {
        if !meta.is_file() {
            return Err(err(format!(
                "{shown} is {}, not a regular file; point it at a TOML file",
                file_kind(&meta.file_type())
            )));
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(err(format!(
                "{shown} is {} bytes; a configuration file may have at most {MAX_CONFIG_BYTES}",
                meta.len()
            )));
        }
        Ok(())
    };
    // `metadata` follows links: a link to a regular file is fine.
    check(&std::fs::metadata(path).map_err(|e| err(format!("cannot read {shown}: {e}")))?)?;
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read {shown}: {e}")))?;
    // The path may have been replaced between the check and the open: check what was opened.
    check(&file.metadata().map_err(|e| err(format!("cannot read {shown}: {e}")))?)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(|e| err(format!("cannot read {shown}: {e}")))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(err(format!("{shown} grew past {MAX_CONFIG_BYTES} bytes while being read")));
    }
    String::from_utf8(bytes)
        .map_err(|e| err(format!("{shown} is not UTF-8 text (byte {})", e.utf8_error().valid_up_to())))
}

/// What a file that is not regular is, in words.
fn file_kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() { "a directory" } else { "not a regular file" }
}

pub(super) fn prefix(section: &str, e: ConfigError) -> ConfigError {
    ConfigError::new(format!("{section}.{}", e.field), e.message)
}

pub(super) fn apply_env(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let Some(rest) = var.strip_prefix("STRATA_") else { return Ok(()) };
    if rest == "CONFIG" {
        return Ok(());
    }
    let lower = rest.to_ascii_lowercase();
    let path: Vec<String> = if let Some(c) = lower.strip_prefix("caches__") {
        let parts: Vec<&str> = c.split("__").collect();
        match parts.as_slice() {
            [name, fields @ ..]
                if !name.is_empty() && (1..=3).contains(&fields.len()) && fields.iter().all(|f| !f.is_empty()) =>
            {
                // Variable names are upper case, cache names may not be: an override applies to
                // the file's cache whose name matches ignoring case (ambiguity is an error).
                let existing: Vec<String> = table
                    .get("caches")
                    .and_then(toml::Value::as_table)
                    .map(|t| t.keys().filter(|k| k.eq_ignore_ascii_case(name)).cloned().collect())
                    .unwrap_or_default();
                let name = match existing.as_slice() {
                    [] => (*name).to_owned(),
                    [one] => one.clone(),
                    _ => {
                        return Err(ConfigError::new(
                            var,
                            format!("matches several caches ignoring case: {}", existing.join(", ")),
                        ));
                    }
                };
                let mut path = vec!["caches".to_owned(), name];
                path.extend(fields.iter().map(|f| (*f).to_owned()));
                path
            }
            _ => {
                return Err(ConfigError::new(
                    var,
                    "expected STRATA_CACHES__<NAME>__<FIELD> (nested: <NAME>__SECURITY__<SECTION>__<FIELD>)",
                ));
            }
        }
    } else {
        match SECTIONS.iter().find(|s| lower.starts_with(&format!("{s}_"))) {
            Some(s) => vec![(*s).to_owned(), lower[s.len() + 1..].to_owned()],
            None => {
                return Err(ConfigError::new(
                    var,
                    "unknown Strata setting; use STRATA_{L1,DEFAULTS,REDIS,SQL,ADMIN}_<FIELD> or STRATA_CACHES__<NAME>__<FIELD>",
                ));
            }
        }
    };
    // A secret stays text whatever it looks like (a numeric token must not turn into a number,
    // whose type error would echo it).
    let is_text =
        path == ["admin", "token"] || path.last().is_some_and(|f| f.ends_with("_env") || f.ends_with("_file"));
    let parsed = if is_text {
        toml::Value::String(value.to_owned())
    } else if let Ok(i) = value.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(f) = value.parse::<f64>() {
        toml::Value::Float(f)
    } else if let Ok(b) = value.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(value.to_owned())
    };
    let mut cur = table;
    for seg in &path[..path.len() - 1] {
        let entry = cur.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur =
            entry.as_table_mut().ok_or_else(|| ConfigError::new(var, format!("`{seg}` is not a table in the file")))?;
    }
    cur.insert(path[path.len() - 1].clone(), parsed);
    Ok(())
}
