//! Throwaway `redis-server` processes for tests, benches and `cargo xtask`: one server on a free
//! loopback port (optionally cluster-enabled or with an append-only file), a cluster of three
//! masters (optionally with replicas), each killed and its directory removed on drop. Or the
//! servers that `STRATA_TEST_REDIS_URL` / `STRATA_TEST_REDIS_CLUSTER` name ([`standalone`],
//! [`cluster`]; `cargo xtask test` sets them from [`test_env`]).
//!
//! Two flavours of each constructor: `try_*` returns `Err` with the reason (for xtask), the
//! others follow the [`services_required`](crate::services_required) rule — a missing
//! `redis-server` skips (returns `None`) unless `CI=true` — and panic when a server that started
//! never answers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a server (or a cluster) may take to become ready: generous, machines are busy.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A free loopback port `p` such that `p + 10000` (the cluster bus port) is free too.
///
/// # Errors
/// When no such pair is found in 100 tries, or binding fails.
pub fn free_port() -> Result<u16, String> {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding 127.0.0.1:0: {e}"))?;
        let p = l.local_addr().map_err(|e| e.to_string())?.port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return Ok(p);
        }
    }
    Err("no free port pair found".into())
}

/// Sends one inline command to `127.0.0.1:port` and returns the raw reply (enough for `PING`,
/// `CLUSTER INFO`, `INFO replication`); `None` when the server does not answer.
#[must_use]
pub fn raw_cmd(port: u16, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Polls `ready` every 20 ms until it is true or `deadline` passes; returns the last answer.
pub fn wait_until(deadline: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ready()
}

/// Whether `name --version` runs.
fn has_binary(name: &str) -> bool {
    Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// How to start a [`Server`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerConfig {
    /// The port (0: a free one, see [`free_port`]).
    pub port: u16,
    /// `--cluster-enabled yes` (the node file lives in the server's directory).
    pub cluster: bool,
    /// `--appendonly yes --appendfsync always` (a SIGKILLed server restarts from its AOF)
    /// instead of no persistence at all.
    pub aof: bool,
    /// Further `redis-server` arguments.
    pub extra: Vec<String>,
}

/// One throwaway `redis-server` on loopback, in its own temporary directory; killed (and the
/// directory removed) on drop.
#[derive(Debug)]
pub struct Server {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    config: ServerConfig,
}

static SERVERS: AtomicU32 = AtomicU32::new(0);

impl Server {
    /// Starts a server and waits until it answers `PING`.
    ///
    /// # Errors
    /// No free port, `redis-server` missing, or not ready within [`READY_TIMEOUT`].
    pub fn try_start(mut config: ServerConfig) -> Result<Server, String> {
        if config.port == 0 {
            config.port = free_port()?;
        }
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("strata-redis-{}-{}-{n}", std::process::id(), config.port));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut server = Server { port: config.port, child: None, dir, config };
        server.try_restart()?;
        Ok(server)
    }

    /// [`Server::try_start`], with the test rule: `None` (skip) when `redis-server` is not
    /// installed and `CI` is not set.
    ///
    /// # Panics
    /// When `CI=true` and `redis-server` is missing, or a server that started never answers.
    #[must_use]
    pub fn launch(config: ServerConfig) -> Option<Server> {
        if !has_binary("redis-server") {
            crate::missing_service("redis-server", &"not installed");
            return None;
        }
        match Server::try_start(config) {
            Ok(s) => Some(s),
            Err(e) => panic!("{e}"),
        }
    }

    /// A plain server on `port` (0: a free one), cluster-enabled or not.
    #[must_use]
    pub fn start(port: u16, cluster: bool) -> Option<Server> {
        Self::start_with(port, cluster, &[])
    }

    /// A server with extra `redis-server` arguments.
    #[must_use]
    pub fn start_with(port: u16, cluster: bool, extra: &[&str]) -> Option<Server> {
        let extra = extra.iter().map(|a| (*a).to_owned()).collect();
        Self::launch(ServerConfig { port, cluster, aof: false, extra })
    }

    /// A server with an append-only file fsynced on every write, on a free port: after
    /// [`Server::kill`] and [`Server::restart`] it holds what it had acknowledged.
    #[must_use]
    pub fn start_aof() -> Option<Server> {
        Self::launch(ServerConfig { aof: true, ..ServerConfig::default() })
    }

    /// Starts the process again (same port, directory and arguments) and waits for `PING`.
    ///
    /// # Errors
    /// The process cannot start or does not answer within [`READY_TIMEOUT`].
    pub fn try_restart(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut c = Command::new("redis-server");
        c.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""]);
        if self.config.aof {
            c.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            c.args(["--appendonly", "no"]);
        }
        c.arg("--dir").arg(&self.dir).stdout(Stdio::null()).stderr(Stdio::null());
        if self.config.cluster {
            c.args(["--cluster-enabled", "yes", "--cluster-config-file"]).arg(self.dir.join("nodes.conf"));
        }
        c.args(&self.config.extra);
        let child = c.spawn().map_err(|e| format!("starting redis-server (is it installed?): {e}"))?;
        self.child = Some(child);
        // `+PONG`, not `-LOADING` while an AOF is replayed.
        let ready = wait_until(READY_TIMEOUT, || raw_cmd(self.port, "PING").is_some_and(|r| r.contains("PONG")));
        if ready { Ok(()) } else { Err(format!("redis-server on port {port} not ready within {READY_TIMEOUT:?}")) }
    }

    /// Starts the process again on the same port.
    ///
    /// # Panics
    /// When it does not come back.
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("{e}");
        }
    }

    /// `redis://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its working directory (AOF, cluster node file).
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id, while running.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `redis-cli -p PORT ARGS...` and returns its standard output (`None` if it could
    /// not run or failed).
    #[must_use]
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `redis-cli -p PORT shutdown nosave`, then reaps the process.
    pub fn shutdown(&mut self) {
        let _ = self.cli(&["shutdown", "nosave"]);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`, `KILL`) to this server's process.
    ///
    /// # Panics
    /// When the server is not running or `kill` fails.
    pub fn signal(&self, sig: &str) {
        let Some(pid) = self.pid() else { panic!("redis-server on port {} is not running", self.port) };
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {pid} failed");
    }

    /// SIGKILL (no shutdown, no final save: only what the AOF already holds survives), then
    /// reaps the process; the directory stays, for a [`Server::restart`].
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends SIGCONT to a stopped process when dropped (so that a failing test never leaves a
/// server stopped).
#[derive(Debug)]
pub struct ContinueOnDrop(pub Option<u32>);

impl Drop for ContinueOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill").arg("-CONT").arg(pid.to_string()).status();
        }
    }
}

/// A Redis Cluster of throwaway servers, or the one an environment variable names.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes' URLs.
    pub urls: Vec<String>,
    /// The servers (empty when the cluster came from the environment).
    pub servers: Vec<Server>,
}

impl Cluster {
    /// `masters` cluster-enabled servers (at least 3) with `replicas` replicas each, created
    /// with `redis-cli --cluster create`; ready once every node reports `cluster_state:ok` and
    /// every master has its replicas online.
    ///
    /// # Errors
    /// A server cannot start, `redis-cli` fails, or the cluster is not ready in time.
    pub fn try_start(masters: usize, replicas: usize, extra: &[&str]) -> Result<Cluster, String> {
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        let mut servers = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            servers.push(Server::try_start(ServerConfig {
                cluster: true,
                extra: extra.clone(),
                ..Default::default()
            })?);
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for s in &servers {
            create.arg(format!("127.0.0.1:{}", s.port));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .map_err(|e| format!("running redis-cli --cluster create (is redis-cli installed?): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
        let online = format!("connected_slaves:{replicas}");
        let ready = wait_until(READY_TIMEOUT, || {
            ports.iter().all(|p| raw_cmd(*p, "CLUSTER INFO").is_some_and(|r| r.contains("cluster_state:ok")))
                && (replicas == 0
                    || ports
                        .iter()
                        .filter_map(|p| raw_cmd(*p, "INFO replication"))
                        .filter(|r| r.contains("role:master"))
                        .all(|r| r.contains(&online) && r.contains("state=online")))
        });
        if !ready {
            return Err(format!("Redis Cluster ({masters} masters, {replicas} replicas each) not ready in time"));
        }
        Ok(Cluster { urls: servers.iter().map(Server::url).collect(), servers })
    }

    /// [`Cluster::try_start`] with the test rule (skip without `redis-server`/`redis-cli`
    /// unless `CI=true`).
    ///
    /// # Panics
    /// When the tools exist but the cluster does not come up.
    #[must_use]
    pub fn launch(masters: usize, replicas: usize, extra: &[&str]) -> Option<Cluster> {
        for tool in ["redis-server", "redis-cli"] {
            if !has_binary(tool) {
                crate::missing_service(tool, &"not installed");
                return None;
            }
        }
        match Cluster::try_start(masters, replicas, extra) {
            Ok(c) => Some(c),
            Err(e) => panic!("{e}"),
        }
    }
}

/// A standalone Redis for a test: the one `STRATA_TEST_REDIS_URL` names, or a throwaway one.
#[derive(Debug)]
pub struct Standalone {
    /// Its URL.
    pub url: String,
    /// The throwaway server, if one was started.
    pub server: Option<Server>,
}

impl Standalone {
    /// The port in the URL (6379 when it names none).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap_or(6379)
    }
}

/// `STRATA_TEST_REDIS_URL`, or a throwaway server (`None`: skipped, see [`Server::launch`]).
#[must_use]
pub fn standalone() -> Option<Standalone> {
    if let Ok(url) = std::env::var("STRATA_TEST_REDIS_URL") {
        return Some(Standalone { url, server: None });
    }
    let server = Server::start(0, false)?;
    Some(Standalone { url: server.url(), server: Some(server) })
}

/// `STRATA_TEST_REDIS_CLUSTER` (comma-separated URLs), or three throwaway masters.
#[must_use]
pub fn cluster() -> Option<Cluster> {
    if let Ok(urls) = std::env::var("STRATA_TEST_REDIS_CLUSTER") {
        let urls = urls.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        return Some(Cluster { urls, servers: Vec::new() });
    }
    throwaway_cluster()
}

/// Three throwaway masters, even when `STRATA_TEST_REDIS_CLUSTER` is set (for tests that
/// reconfigure the cluster: moving slots, ACL users).
#[must_use]
pub fn throwaway_cluster() -> Option<Cluster> {
    Cluster::launch(3, 0, &[])
}

/// Six throwaway nodes, three masters with one replica each, with a short
/// `cluster-node-timeout` (a failover takes about that long), replicas that may always take
/// over, and masters that keep serving their slots while another master is down
/// (`cluster-require-full-coverage no`: with `yes`, Redis itself answers `CLUSTERDOWN` for every
/// slot until the failover).
#[must_use]
pub fn throwaway_replicated_cluster(node_timeout_ms: u32) -> Option<Cluster> {
    let timeout = node_timeout_ms.to_string();
    let extra = [
        "--cluster-node-timeout",
        timeout.as_str(),
        "--cluster-replica-validity-factor",
        "0",
        "--cluster-require-full-coverage",
        "no",
    ];
    Cluster::launch(3, 1, &extra)
}

/// A URL to a port nobody listens on.
///
/// # Panics
/// When no free port is found.
#[must_use]
pub fn closed_port_url() -> String {
    match free_port() {
        Ok(p) => format!("redis://127.0.0.1:{p}"),
        Err(e) => panic!("{e}"),
    }
}

/// Keeps the services of [`test_env`] alive; dropping it stops them.
#[derive(Debug)]
pub struct Guards {
    _standalone: Server,
    _cluster: Cluster,
}

/// Starts a standalone server and a three-master cluster and returns the environment variables
/// that point tests at them (`STRATA_TEST_REDIS_URL`, `STRATA_TEST_REDIS_CLUSTER` as
/// comma-separated URLs).
///
/// # Errors
/// A server or the cluster cannot start.
pub fn test_env() -> Result<(Vec<(String, String)>, Guards), String> {
    let standalone = Server::try_start(ServerConfig::default())?;
    let cluster = Cluster::try_start(3, 0, &[])?;
    let env = vec![
        ("STRATA_TEST_REDIS_URL".to_owned(), standalone.url()),
        ("STRATA_TEST_REDIS_CLUSTER".to_owned(), cluster.urls.join(",")),
    ];
    Ok((env, Guards { _standalone: standalone, _cluster: cluster }))
}
