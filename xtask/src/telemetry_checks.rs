//! Checks of the operations files and the admin dashboard (std only).
//!
//! - [`promtool_check`]: `promtool check rules` and `promtool test rules` on `docs/operations`,
//!   then every `strata_*` metric used by a rule or a Grafana panel must be one that
//!   `strata-telemetry` exports (the list printed by its `metric_names` example), and every
//!   `strata:*` series used must be a recording rule. Fails when nothing is referenced, so it
//!   cannot pass vacuously.
//! - [`dashboard_browser_check`]: headless Chromium loads the dashboard twice a few seconds
//!   apart; the request counter it renders must be positive and must move, and a PNG
//!   screenshot is saved.
//! - [`demo_dashboard_check`]: runs `strata-demo` (the `cargo xtask demo` binary) and checks its
//!   dashboard while the workload runs.

use std::collections::BTreeSet;
use std::env;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RULE_FILES: [&str; 2] = ["docs/operations/slo-rules.yml", "docs/operations/alerts.yml"];
const DASHBOARD: &str = "docs/operations/grafana-dashboard.json";
const CHROMIUM: &str = "/usr/bin/chromium";

fn cargo(root: &Path) -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root);
    c
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("cannot start {shown}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{shown} exited with {}:\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr)))
    }
}

/// Runs promtool on the rules and checks every metric they and the dashboard use.
pub(crate) fn promtool_check(root: &Path) -> Result<(), String> {
    let ops = root.join("docs/operations");
    let mut check = Command::new("promtool");
    check.arg("check").arg("rules").current_dir(root);
    for f in RULE_FILES {
        check.arg(f);
    }
    eprintln!("{}", output(&mut check).map_err(|e| format!("promtool (apt-get install prometheus): {e}"))?);
    eprintln!(
        "{}",
        output(Command::new("promtool").args(["test", "rules", "alerts_test.yml"]).current_dir(ops.join("tests")))?
    );

    let listed = output(cargo(root).args(["run", "-q", "-p", "strata-telemetry", "--example", "metric_names"]))?;
    let exported: BTreeSet<String> =
        listed.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect();
    if exported.len() < 20 || !exported.iter().all(|n| n.starts_with("strata_")) {
        return Err(format!("implausible exported metric list ({} names): {exported:?}", exported.len()));
    }

    let mut exprs: Vec<(String, String)> = Vec::new();
    let mut recorded = BTreeSet::new();
    for f in RULE_FILES {
        let text = std::fs::read_to_string(root.join(f)).map_err(|e| format!("{f}: {e}"))?;
        let (e, r) = yaml_exprs(&text);
        if e.is_empty() {
            return Err(format!("{f}: no `expr:` found"));
        }
        exprs.extend(e.into_iter().map(|x| (f.to_owned(), x)));
        recorded.extend(r);
    }
    let dash = std::fs::read_to_string(root.join(DASHBOARD)).map_err(|e| format!("{DASHBOARD}: {e}"))?;
    let panel_exprs = json_exprs(&dash);
    if panel_exprs.len() < 5 {
        return Err(format!("{DASHBOARD}: only {} panel queries found", panel_exprs.len()));
    }
    exprs.extend(panel_exprs.into_iter().map(|x| (DASHBOARD.to_owned(), x)));
    let used = check_names(&exprs, &exported, &recorded)?;
    if used.len() < 10 {
        return Err(format!("only {} distinct strata metrics referenced: {used:?}", used.len()));
    }
    eprintln!("promtool_check: {} expressions use {} exported metrics; all known", exprs.len(), used.len());
    Ok(())
}

/// Checks the names used by `exprs`; returns the distinct raw metrics used.
fn check_names(
    exprs: &[(String, String)],
    exported: &BTreeSet<String>,
    recorded: &BTreeSet<String>,
) -> Result<BTreeSet<String>, String> {
    let mut used = BTreeSet::new();
    let mut errors = Vec::new();
    for (file, expr) in exprs {
        for name in metric_names(expr) {
            if name.starts_with("strata:") {
                if !recorded.contains(&name) {
                    errors.push(format!("{file}: `{name}` is not a recording rule (in `{}`)", expr.trim()));
                }
            } else if exported.contains(&name) {
                used.insert(name);
            } else {
                errors.push(format!("{file}: `{name}` is not exported by strata-telemetry (in `{}`)", expr.trim()));
            }
        }
    }
    if errors.is_empty() { Ok(used) } else { Err(errors.join("\n")) }
}

/// `strata_*` and `strata:*` identifiers in a PromQL expression, outside quoted strings.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut unquoted = String::with_capacity(expr.len());
    let mut quote = None;
    for c in expr.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' || c == '`' => {
                quote = Some(c);
                unquoted.push(' ');
            }
            None => unquoted.push(c),
        }
    }
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    for tok in unquoted.split(|c: char| !is_ident(c)) {
        if tok.starts_with("strata_") || tok.starts_with("strata:") {
            out.push(tok.to_owned());
        }
    }
    out
}

/// The `expr:` values (inline or block scalars) and `record:` names of a rules file.
fn yaml_exprs(text: &str) -> (Vec<String>, BTreeSet<String>) {
    let lines: Vec<&str> = text.lines().collect();
    let (mut exprs, mut records) = (Vec::new(), BTreeSet::new());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start().trim_start_matches("- ");
        if let Some(v) = trimmed.strip_prefix("record:") {
            records.insert(v.trim().to_owned());
        }
        if let Some(v) = trimmed.strip_prefix("expr:") {
            let v = v.trim();
            if v.starts_with('|') || v.starts_with('>') {
                let indent = line.len() - line.trim_start().len();
                let mut block = String::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let ni = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && ni <= indent {
                        break;
                    }
                    block.push_str(next.trim());
                    block.push('\n');
                    i += 1;
                }
                exprs.push(block);
            } else {
                exprs.push(v.to_owned());
            }
        }
        i += 1;
    }
    (exprs, records)
}

/// The values of every `"expr": "..."` in a JSON document (JSON escapes decoded).
fn json_exprs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("\"expr\"") {
        rest = &rest[at + 6..];
        let Some(colon) = rest.find(':') else { break };
        let after = rest[colon + 1..].trim_start();
        let Some(body) = after.strip_prefix('"') else { continue };
        let mut value = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    Some(other) => value.push(other),
                    None => break,
                },
                c => value.push(c),
            }
        }
        out.push(value);
        rest = chars.as_str();
    }
    out
}

fn chromium(profile: &Path) -> Command {
    let mut c = Command::new(CHROMIUM);
    c.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(Stdio::null());
    c
}

/// The text of the element with `id` in a dumped DOM.
fn element_text(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = at + dom[at..].find('>')? + 1;
    let end = start + dom[start..].find('<')?;
    Some(dom[start..end].trim().to_owned())
}

fn dump(url: &str, profile: &Path) -> Result<(u64, u64, String), String> {
    let dom = output(chromium(profile).args(["--virtual-time-budget=4000", "--dump-dom", url]))?;
    let number = |id: &str| -> Result<u64, String> {
        let t = element_text(&dom, id).ok_or_else(|| format!("#{id} not in the page"))?;
        t.parse().map_err(|_| format!("#{id} is {t:?}, not a number"))
    };
    Ok((number("total-requests")?, number("polls")?, dom))
}

/// Loads the dashboard at `url` twice, checks the request counter moves, saves a screenshot.
pub(crate) fn dashboard_browser_check(url: &str, screenshot: &Path) -> Result<(), String> {
    let profile = env::temp_dir().join(format!("strata-chromium-{}", std::process::id()));
    let result = (|| {
        let (first, polls1, dom) = dump(url, &profile)?;
        if polls1 < 2 {
            return Err(format!("the page polled {polls1} time(s); expected >= 2"));
        }
        if let Some(err) = element_text(&dom, "err").filter(|e| !e.is_empty()) {
            return Err(format!("the page reports: {err}"));
        }
        std::thread::sleep(Duration::from_secs(3));
        let (second, _, _) = dump(url, &profile)?;
        if first == 0 || second <= first {
            return Err(format!("rendered request count did not move: {first} then {second}"));
        }
        if let Some(dir) = screenshot.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        output(
            chromium(&profile)
                .args(["--virtual-time-budget=4000", "--window-size=1400,1900", "--hide-scrollbars"])
                .arg(format!("--screenshot={}", screenshot.display()))
                .arg(url),
        )?;
        let png = std::fs::read(screenshot).map_err(|e| format!("screenshot {}: {e}", screenshot.display()))?;
        if !png.starts_with(b"\x89PNG\r\n\x1a\n") || png.len() < 10_000 {
            return Err(format!("screenshot {} is not a plausible PNG ({} bytes)", screenshot.display(), png.len()));
        }
        eprintln!(
            "dashboard_browser_check: requests rendered {first} -> {second}; screenshot {} ({} bytes)",
            screenshot.display(),
            png.len()
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&profile);
    result
}

/// Builds and runs the real demo (`strata-demo`: L1 + SQLite, Redis when configured) at a
/// steady request rate so that the workload is running while Chromium loads its dashboard,
/// runs [`dashboard_browser_check`] on it, and stops it.
pub(crate) fn demo_dashboard_check(root: &Path, screenshot: &Path) -> Result<(), String> {
    let demo = ["-q", "-p", "strata", "--features", "full", "--bin", "strata-demo"];
    output(cargo(root).arg("build").args(demo))?;
    let mut child = cargo(root)
        .arg("run")
        .args(demo)
        .args(["--", "--requests", "400000", "--rate", "4000", "--linger", "5"])
        .env("STRATA_ADMIN_LISTEN", "127.0.0.1:0")
        .env_remove("STRATA_REDIS_URL")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start strata-demo: {e}"))?;
    let result = (|| {
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        let url = loop {
            let line =
                lines.next().ok_or("strata-demo exited before printing its address")?.map_err(|e| e.to_string())?;
            eprintln!("  demo| {line}");
            if let Some(rest) = line.trim().strip_prefix("dashboard: ") {
                break rest.split_whitespace().next().unwrap_or_default().to_owned();
            }
            if Instant::now() > deadline {
                return Err("strata-demo printed no dashboard address".to_owned());
            }
        };
        // Keep draining the demo's output so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        std::thread::sleep(Duration::from_secs(2));
        dashboard_browser_check(&url, screenshot)
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Where the screenshot goes by default.
pub(crate) fn default_screenshot(root: &Path) -> PathBuf {
    root.join("target/dashboard.png")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_extracted_outside_quotes() {
        let e = r#"sum(rate(strata_cache_requests_total{tier="strata_fake"}[5m])) / strata:cache_x:rate5m"#;
        assert_eq!(metric_names(e), vec!["strata_cache_requests_total", "strata:cache_x:rate5m"]);
    }

    #[test]
    fn unknown_metric_and_unrecorded_series_fail() {
        let exported: BTreeSet<String> = ["strata_a_total".to_owned()].into();
        let recorded: BTreeSet<String> = ["strata:ok".to_owned()].into();
        let good = vec![("f".to_owned(), "rate(strata_a_total[5m]) + strata:ok".to_owned())];
        assert_eq!(check_names(&good, &exported, &recorded).map(|u| u.len()), Ok(1));
        let bad = vec![("f".to_owned(), "strata_b_total".to_owned())];
        assert!(check_names(&bad, &exported, &recorded).is_err());
        let bad = vec![("f".to_owned(), "strata:missing".to_owned())];
        assert!(check_names(&bad, &exported, &recorded).is_err());
    }

    #[test]
    fn yaml_and_json_exprs_are_found() {
        let y = "groups:\n  - name: g\n    rules:\n      - record: strata:r\n        expr: |\n          sum(strata_a)\n          / 2\n      - alert: A\n        expr: strata_b > 1\n        for: 1m\n";
        let (e, r) = yaml_exprs(y);
        assert_eq!(e, vec!["sum(strata_a)\n/ 2\n".to_owned(), "strata_b > 1".to_owned()]);
        assert!(r.contains("strata:r"));
        let j = r#"{"targets":[{"expr": "rate(strata_c{a=\"b\"}[1m])"},{"expr":"strata_d"}]}"#;
        assert_eq!(json_exprs(j), vec![r#"rate(strata_c{a="b"}[1m])"#.to_owned(), "strata_d".to_owned()]);
    }

    #[test]
    fn element_text_reads_a_rendered_number() {
        let dom = r#"<div class="big" id="total-requests">1234</div><span id="polls">4</span>"#;
        assert_eq!(element_text(dom, "total-requests").as_deref(), Some("1234"));
        assert_eq!(element_text(dom, "polls").as_deref(), Some("4"));
    }
}
