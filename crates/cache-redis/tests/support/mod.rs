//! Shared test support: throwaway `redis-server` processes (standalone and cluster), or the
//! servers named by `STRATA_TEST_REDIS_URL` / `STRATA_TEST_REDIS_CLUSTER` (set by xtask).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, missing_docs)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `CI=true`: a missing service is a failure, not a skip.
pub fn ci() -> bool {
    strata_testkit::services_required()
}

fn skip<T>(what: &str) -> Option<T> {
    strata_testkit::missing_service(what, &"not reachable");
    None
}

/// A random prefix so tests never see each other's keys.
pub fn unique_prefix(test: &str) -> String {
    format!("t{}{:08x}:{test}:", std::process::id(), fastrand::u32(..))
}

/// A free loopback port `p` such that `p + 10000` (the cluster bus port) is free too.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// Sends one inline command and returns the raw reply (enough for PING / CLUSTER INFO).
pub fn raw_cmd(port: u16, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

pub fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// One throwaway `redis-server`, killed (and its directory removed) on drop.
pub struct Server {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    cluster: bool,
    extra: Vec<String>,
}

fn has_binary(name: &str) -> bool {
    Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

impl Server {
    /// Starts a server on `port` (0: a free one).
    pub fn start(port: u16, cluster: bool) -> Option<Server> {
        Self::start_with(port, cluster, &[])
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(port: u16, cluster: bool, extra: &[&str]) -> Option<Server> {
        if !has_binary("redis-server") {
            return skip("redis-server not installed");
        }
        let port = if port == 0 { free_port() } else { port };
        let dir = std::env::temp_dir().join(format!("strata-redis-test-{}-{port}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let extra = extra.iter().map(|a| (*a).to_owned()).collect();
        let mut s = Server { port, child: None, dir, cluster, extra };
        s.spawn();
        Some(s)
    }

    fn spawn(&mut self) {
        let mut c = Command::new("redis-server");
        c.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            c.args(["--cluster-enabled", "yes", "--cluster-config-file"]).arg(self.dir.join("nodes.conf"));
        }
        c.args(&self.extra);
        self.child = Some(c.spawn().unwrap());
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(60), || raw_cmd(port, "PING").is_some_and(|r| r.contains("PONG"))),
            "redis-server on port {port} did not start"
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli -p PORT shutdown nosave`, then reaps the process.
    pub fn shutdown(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Starts again on the same port.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (`STOP`, `CONT`, `KILL`) to this test's own server.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().expect("server running");
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap().success();
        assert!(ok, "kill -{sig} {pid} failed");
    }

    /// SIGKILL, then reaps the process (the directory stays, for a restart).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends SIGCONT to a stopped server when dropped (so that a failing test never leaves one
/// stopped).
pub struct ContinueOnDrop(pub Option<u32>);

impl Drop for ContinueOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill").arg("-CONT").arg(pid.to_string()).status();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A standalone Redis for a test: the one in `STRATA_TEST_REDIS_URL`, or a throwaway server.
pub struct Standalone {
    pub url: String,
    pub server: Option<Server>,
}

pub fn standalone() -> Option<Standalone> {
    if let Ok(url) = std::env::var("STRATA_TEST_REDIS_URL") {
        return Some(Standalone { url, server: None });
    }
    let server = Server::start(0, false)?;
    Some(Standalone { url: server.url(), server: Some(server) })
}

/// A Redis Cluster for a test: `STRATA_TEST_REDIS_CLUSTER`, or three throwaway masters.
pub struct Cluster {
    pub urls: Vec<String>,
    pub servers: Vec<Server>,
}

pub fn cluster() -> Option<Cluster> {
    if let Ok(urls) = std::env::var("STRATA_TEST_REDIS_CLUSTER") {
        let urls: Vec<String> = urls.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        return Some(Cluster { urls, servers: Vec::new() });
    }
    throwaway_cluster()
}

/// Three throwaway masters, even when `STRATA_TEST_REDIS_CLUSTER` is set (for tests that
/// reconfigure the cluster: moving slots, ACL users).
pub fn throwaway_cluster() -> Option<Cluster> {
    if !has_binary("redis-cli") {
        return skip("redis-cli not installed");
    }
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Server::start(0, true)?);
    }
    let mut create = Command::new("redis-cli");
    create.arg("--cluster").arg("create");
    for s in &servers {
        create.arg(format!("127.0.0.1:{}", s.port));
    }
    let out = create.args(["--cluster-replicas", "0", "--cluster-yes"]).output().unwrap();
    assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    assert!(
        wait_until(Duration::from_secs(60), || ports
            .iter()
            .all(|p| raw_cmd(*p, "CLUSTER INFO").is_some_and(|r| r.contains("cluster_state:ok")))),
        "cluster did not reach cluster_state:ok"
    );
    let urls = servers.iter().map(Server::url).collect();
    Some(Cluster { urls, servers })
}

/// Six throwaway nodes, three masters with one replica each, with a short
/// `cluster-node-timeout` (so that a failover takes about that long) and replicas that may
/// always take over, and masters that keep serving their slots while another master is down
/// (`cluster-require-full-coverage no`: with `yes`, Redis itself answers `CLUSTERDOWN` for
/// every slot until the failover, and no client can serve any). Waits until every master has
/// its replica online.
pub fn throwaway_replicated_cluster(node_timeout_ms: u32) -> Option<Cluster> {
    if !has_binary("redis-cli") {
        return skip("redis-cli not installed");
    }
    let timeout = node_timeout_ms.to_string();
    let extra = [
        "--cluster-node-timeout",
        timeout.as_str(),
        "--cluster-replica-validity-factor",
        "0",
        "--cluster-require-full-coverage",
        "no",
    ];
    let mut servers = Vec::new();
    for _ in 0..6 {
        servers.push(Server::start_with(0, true, &extra)?);
    }
    let mut create = Command::new("redis-cli");
    create.arg("--cluster").arg("create");
    for s in &servers {
        create.arg(format!("127.0.0.1:{}", s.port));
    }
    let out = create.args(["--cluster-replicas", "1", "--cluster-yes"]).output().unwrap();
    assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    assert!(
        wait_until(Duration::from_secs(60), || {
            ports.iter().all(|p| raw_cmd(*p, "CLUSTER INFO").is_some_and(|r| r.contains("cluster_state:ok")))
                && ports
                    .iter()
                    .filter(|p| raw_cmd(**p, "INFO replication").is_some_and(|r| r.contains("role:master")))
                    .all(|p| {
                        raw_cmd(*p, "INFO replication")
                            .is_some_and(|r| r.contains("connected_slaves:1") && r.contains("state=online"))
                    })
        }),
        "replicated cluster did not become ready"
    );
    let urls = servers.iter().map(Server::url).collect();
    Some(Cluster { urls, servers })
}

/// A URL to a port nobody listens on.
pub fn closed_port_url() -> String {
    let p = free_port();
    format!("redis://127.0.0.1:{p}")
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
