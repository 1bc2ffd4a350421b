//! Shared test support: the throwaway `redis-server` processes of `strata_testkit::redis`
//! (standalone and cluster, or the servers named by `STRATA_TEST_REDIS_URL` /
//! `STRATA_TEST_REDIS_CLUSTER`), plus this crate's own helpers (key prefixes, child processes).
#![allow(dead_code, unused_imports, unreachable_pub, clippy::unwrap_used, missing_docs)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use strata_testkit::redis::{
    Cluster, ContinueOnDrop, Server, Standalone, closed_port_url, cluster, free_port, raw_cmd, standalone,
    throwaway_cluster, throwaway_replicated_cluster, wait_until,
};

/// `CI=true`: a missing service is a failure, not a skip.
pub fn ci() -> bool {
    strata_testkit::services_required()
}

/// A random prefix so tests never see each other's keys.
pub fn unique_prefix(test: &str) -> String {
    format!("t{}{:08x}:{test}:", std::process::id(), fastrand::u32(..))
}

/// Re-executes this test binary to run `child_test` (an `#[ignore]`d test) in another process.
pub fn spawn_child(child_test: &str, env: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut c = Command::new(exe);
    c.args(["--exact", child_test, "--ignored", "--nocapture", "--test-threads", "1"]);
    c.env("STRATA_TEST_CHILD", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.spawn().unwrap()
}

/// Whether this process is a re-executed child.
pub fn is_child() -> bool {
    std::env::var("STRATA_TEST_CHILD").is_ok()
}

/// Reads a child's stdout lines and waits for markers printed by it.
pub struct ChildLines {
    rx: std::sync::mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl ChildLines {
    pub fn new(child: &mut Child) -> Self {
        use std::io::BufRead;
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Self { rx, stderr: Some(stderr) }
    }

    /// Waits for a line containing `marker`; returns what follows it.
    pub fn wait(&mut self, marker: &str, timeout: Duration) -> String {
        loop {
            let Ok(line) = self.rx.recv_timeout(timeout) else {
                let err = self.stderr.take().map(|t| t.join().unwrap()).unwrap_or_default();
                panic!("child never printed {marker}; its stderr:\n{err}");
            };
            // libtest prints `test name ... ` without a newline before the child's own output.
            if let Some(at) = line.find(marker) {
                return line[at + marker.len()..].trim().to_owned();
            }
        }
    }
}
