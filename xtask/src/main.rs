//! Strata's developer loop. Run through the cargo alias: `cargo xtask <command>`.
//!
//! - `ci`       fmt check, clippy -D warnings, per-feature checks of the facade, tests (nextest
//!   when installed) and doctests, docs with broken links denied, cargo-deny, layering check
//! - `test`     tests and doctests only
//! - `demo`     the main job: a Zipf workload through the facade (release build, with cargo's
//!   progress); flags after it go to the demo (`cargo xtask demo --serve` keeps the dashboard
//!   up until Ctrl-C, `--requests N`, `--rate N`, `--linger SECS`)
//! - `bench`    criterion benches (short measurement; pass extra args after `--`)
//! - `deny`     cargo-deny (installed if missing)
//! - `layering` the crate layering check alone
//! - `features` `cargo tree` per feature choice: e.g. Prometheus alone pulls no NVML, axum,
//!   hyper, OpenTelemetry or resource manager
//! - `public-api` no third-party type in a public signature outside the escape hatches
//! - `services` start the throwaway Redis (standalone + cluster) the tests use, print their
//!   URLs as `export` lines, and keep them until Ctrl-C
//! - `ops`      promtool over docs/operations and the metric-name cross-check
//! - `dashboard` the demo with its dashboard, checked in headless Chromium (screenshot saved)
//! - `fuzz [N]` the long fuzz run of the security decoders (default 10,000,000 inputs)

use std::collections::{BTreeMap, BTreeSet};
use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

mod feature_tree;
mod fuzz;
mod public_api;
mod telemetry_checks;

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r.to_vec()),
        None => ("help", Vec::new()),
    };
    let result = match cmd {
        "ci" => ci(),
        "test" => test(),
        "demo" => demo(&rest),
        "bench" => bench(&rest),
        "deny" => deny(),
        "layering" => layering(),
        "features" => feature_tree::check(),
        "public-api" => public_api_check(),
        "services" => services_forever(),
        "ops" => telemetry_checks::promtool_check(&root()),
        "dashboard" => dashboard(),
        "fuzz" => fuzz::fuzz(&rest),
        "fmt" => run(cargo().args(["fmt", "--all"])),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci|test|demo|bench|deny|layering|features|public-api|fmt|services|ops|dashboard|fuzz>"
            );
            return if cmd == "help" { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {cmd}: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> Result {
    let shown = format!("{cmd:?}");
    eprintln!("\n$ {shown}");
    let t = Instant::now();
    let status = cmd.status().map_err(|e| format!("cannot start {shown}: {e}"))?;
    eprintln!("  ({:.1}s)", t.elapsed().as_secs_f64());
    if status.success() { Ok(()) } else { Err(format!("{shown} exited with {status}")) }
}

fn step(name: &str, f: impl FnOnce() -> Result) -> Result {
    eprintln!("\n==> {name}");
    f().map_err(|e| format!("{name}: {e}"))
}

fn ci() -> Result {
    let t = Instant::now();
    step("fmt", || run(cargo().args(["fmt", "--all", "--", "--check"])))?;
    step("clippy", || {
        run(cargo().args(["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"]))
    })?;
    step("layering", layering)?;
    step("public API", public_api_check)?;
    step("facade features", features)?;
    step("dependency trees per feature", feature_tree::check)?;
    step("tests", test)?;
    step("operations rules (promtool)", || telemetry_checks::promtool_check(&root()))?;
    step("dashboard in headless Chromium", dashboard)?;
    step("docs", docs)?;
    step("deny", deny)?;
    eprintln!("\nxtask ci: all green in {:.0}s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Each facade feature alone, none, and all (cargo-hack's --each-feature, without the install).
fn features() -> Result {
    let meta = metadata(true)?;
    let facade = packages(&meta).into_iter().find(|p| p["name"] == "strata").ok_or("no strata package")?;
    let feats: Vec<String> = facade["features"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    run(cargo().args(["check", "-p", "strata", "--no-default-features"]))?;
    for f in feats.iter().filter(|f| *f != "default") {
        run(cargo().args(["check", "-p", "strata", "--no-default-features", "--features", f]))?;
    }
    run(cargo().args(["check", "-p", "strata", "--all-features"]))
}

/// Tests run against throwaway services started here (a standalone Redis and a 3-master Redis
/// Cluster on free loopback ports), pointed at by `STRATA_TEST_*` variables; PostgreSQL and
/// MariaDB are the machine's services, each test using a fresh schema. With `CI=true` every
/// integration test treats a missing service as a failure.
fn test() -> Result {
    let (vars, _guards) = strata_testkit::redis::test_env()?;
    for (k, v) in &vars {
        eprintln!("  {k}={v}");
    }
    let mut vars = vars;
    // The tests xtask runs never pass by skipping: a missing service fails them
    // (`strata_testkit::services_required`).
    vars.push(("CI".into(), "true".into()));
    if env::var_os("STRATA_TEST_PG_URL").is_none() {
        vars.push(("STRATA_TEST_PG_URL".into(), "postgres://postgres@127.0.0.1:5432/test".into()));
    }
    let with_env = |c: &mut Command| {
        for (k, v) in &vars {
            c.env(k, v);
        }
    };
    let nextest = Command::new("cargo-nextest").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if nextest {
        let mut c = cargo();
        c.args(["nextest", "run", "--workspace", "--all-features", "--no-fail-fast"]);
        with_env(&mut c);
        run(&mut c)?;
    } else {
        eprintln!("cargo-nextest not found; using cargo test");
        let mut c = cargo();
        c.args(["test", "--workspace", "--all-features", "--lib", "--bins", "--tests", "--no-fail-fast"]);
        with_env(&mut c);
        run(&mut c)?;
    }
    let mut c = cargo();
    c.args(["test", "--workspace", "--all-features", "--doc"]);
    with_env(&mut c);
    run(&mut c)
}

fn services_forever() -> Result {
    let (vars, _guards) = strata_testkit::redis::test_env()?;
    for (k, v) in &vars {
        println!("export {k}={v}");
    }
    eprintln!("services running; Ctrl-C stops them");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn public_api_check() -> Result {
    public_api::check(&metadata(true)?)
}

fn dashboard() -> Result {
    telemetry_checks::demo_dashboard_check(&root(), &telemetry_checks::default_screenshot(&root()))
}

fn docs() -> Result {
    run(cargo()
        .args(["doc", "--workspace", "--all-features", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings -D rustdoc::broken_intra_doc_links"))
}

/// Builds the demo with cargo's progress shown (a first release build takes minutes), then runs
/// it without cargo's chatter, passing `extra` through.
fn demo(extra: &[String]) -> Result {
    const TARGET: [&str; 8] = ["--release", "-p", "strata", "--features", "full", "--bin", "strata-demo", "--quiet"];
    eprintln!("xtask demo: building strata-demo (release; the first build takes several minutes)");
    run(cargo().arg("build").args(&TARGET[..7]))?;
    run(cargo().arg("run").args(TARGET).arg("--").args(extra))
}

fn bench(extra: &[String]) -> Result {
    let mut c = cargo();
    c.args(["bench", "-p", "strata-benches", "--"]);
    if extra.is_empty() {
        c.args(["--warm-up-time", "1", "--measurement-time", "3"]);
    } else {
        c.args(extra);
    }
    run(&mut c)
}

fn deny() -> Result {
    let have = Command::new("cargo-deny").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !have {
        eprintln!("cargo-deny not found: installing it (cargo install --locked cargo-deny)");
        run(cargo().args(["install", "--locked", "cargo-deny"]))?;
    }
    // Licences, bans (incl. the layering `wrappers`) and sources run for real. Advisories need
    // the RustSec database, which cannot be fetched on this network: run that check only when a
    // local copy exists.
    run(cargo().args(["deny", "--all-features", "check", "bans", "licenses", "sources"]))?;
    let db = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("advisory-dbs"));
    match db {
        Some(d) if d.is_dir() => {
            run(cargo().args(["deny", "--all-features", "check", "--disable-fetch", "advisories"]))
        }
        _ => {
            eprintln!("advisories: skipped (no local RustSec database; it cannot be fetched here)");
            Ok(())
        }
    }
}

fn metadata(no_deps: bool) -> Result<serde_json::Value> {
    let mut c = cargo();
    c.args(["metadata", "--format-version", "1", "--all-features"]);
    if no_deps {
        c.arg("--no-deps");
    }
    let out = c.output().map_err(|e| format!("cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata output: {e}"))
}

fn packages(meta: &serde_json::Value) -> Vec<&serde_json::Value> {
    meta["packages"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

/// Leaves never depend on siblings (stated exceptions); cache-core depends on no Strata crate
/// but the ground floor (strata-governance), which depends on no Strata crate at all; neither
/// pulls in a heavy I/O dependency, even transitively.
fn layering() -> Result {
    const LEAVES: [&str; 7] = [
        "strata-cache-redis",
        "strata-cache-sql",
        "strata-consistency",
        "strata-security",
        "strata-gpu",
        "strata-resource-qos",
        "strata-telemetry",
    ];
    // The resource manager schedules GPUs; telemetry observes caches and the resource manager.
    const ALLOWED: [(&str, &str); 3] = [
        ("strata-resource-qos", "strata-gpu"),
        ("strata-telemetry", "strata-resource-qos"),
        ("strata-telemetry", "strata-gpu"),
    ];
    const HEAVY: [&str; 10] = [
        "redis",
        "deadpool-redis",
        "sea-orm",
        "sqlx",
        "opentelemetry",
        "opentelemetry_sdk",
        "prometheus",
        "nvml-wrapper",
        "axum",
        "hyper",
    ];
    // The crate every other may depend on (access, audit, breaker settings, correlation ids).
    const GROUND_FLOOR: &str = "strata-governance";
    let meta = metadata(false)?;
    let mut problems = Vec::new();
    let pkgs = packages(&meta);
    let by_id: BTreeMap<&str, &str> =
        pkgs.iter().filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?))).collect();
    for p in &pkgs {
        let Some(name) = p["name"].as_str() else { continue };
        if !name.starts_with("strata") {
            continue;
        }
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let (Some(dep), kind) = (d["name"].as_str(), d["kind"].as_str()) else { continue };
            if kind == Some("dev") {
                continue;
            }
            // strata-governance is the ground floor: anyone may use it, and it uses no Strata crate.
            if name == GROUND_FLOOR && dep.starts_with("strata") {
                problems.push(format!("{GROUND_FLOOR} must not depend on {dep}"));
            }
            if name == "strata-cache-core" && dep.starts_with("strata") && dep != GROUND_FLOOR {
                problems.push(format!("strata-cache-core must not depend on {dep}"));
            }
            if LEAVES.contains(&name) && LEAVES.contains(&dep) && !ALLOWED.contains(&(name, dep)) {
                problems.push(format!("leaf {name} must not depend on sibling leaf {dep}"));
            }
        }
    }
    // Transitive normal dependencies of cache-core.
    let nodes = meta["resolve"]["nodes"].as_array().ok_or("no resolve graph")?;
    let graph: BTreeMap<&str, Vec<&str>> = nodes
        .iter()
        .filter_map(|n| {
            let deps = n["deps"]
                .as_array()?
                .iter()
                .filter(|d| d["dep_kinds"].as_array().is_some_and(|ks| ks.iter().any(|k| k["kind"].is_null())))
                .filter_map(|d| d["pkg"].as_str())
                .collect();
            Some((n["id"].as_str()?, deps))
        })
        .collect();
    // Transitive normal dependencies of cache-core and of the ground floor: nothing heavy.
    let mut closure = Vec::new();
    for root in ["strata-cache-core", GROUND_FLOOR] {
        let start = by_id.iter().find(|(_, n)| **n == root).map(|(id, _)| *id).ok_or(format!("no {root}"))?;
        let mut seen = BTreeSet::new();
        let mut stack = vec![start];
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(name) = by_id.get(id)
                && HEAVY.contains(name)
            {
                problems.push(format!("{root} pulls in {name}"));
            }
            stack.extend(graph.get(id).into_iter().flatten().copied());
        }
        closure.push(format!("{} in {root}'s", seen.len()));
    }
    if problems.is_empty() {
        eprintln!("layering: ok ({} dependency closure)", closure.join(", "));
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
