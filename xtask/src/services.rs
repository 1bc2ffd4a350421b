//! Throwaway services for tests and benches: `redis-server` processes on free loopback ports
//! (one standalone, one three-master cluster), stopped and cleaned up on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, String>;

/// A free loopback port `p` such that `p + 10000` (the cluster bus port) is free too.
fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding 127.0.0.1:0: {e}"))?;
        let p = l.local_addr().map_err(|e| e.to_string())?.port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return Ok(p);
        }
    }
    Err("no free port pair found".into())
}

/// Sends one inline command and returns the raw reply.
fn raw_cmd(port: u16, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn wait_until(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    if ready() { Ok(()) } else { Err(format!("{what} not ready within {deadline:?}")) }
}

/// One `redis-server` process with its own temporary directory.
struct Node {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl Node {
    fn start(cluster: bool) -> Result<Node> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("strata-xtask-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"]).arg(dir.join("nodes.conf"));
        }
        let child = cmd.spawn().map_err(|e| format!("starting redis-server (is it installed?): {e}"))?;
        let node = Node { port, child, dir };
        wait_until(&format!("redis-server on port {port}"), Duration::from_secs(10), || {
            raw_cmd(port, "PING").is_some_and(|r| r.contains("PONG"))
        })?;
        Ok(node)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway standalone Redis.
pub(crate) struct RedisStandalone {
    node: Node,
}

impl RedisStandalone {
    /// Starts one and waits until it answers `PING`.
    pub(crate) fn start() -> Result<Self> {
        Ok(Self { node: Node::start(false)? })
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        self.node.url()
    }
}

/// A throwaway Redis Cluster of three masters (no replicas).
pub(crate) struct RedisCluster {
    nodes: Vec<Node>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, creates the cluster and waits for
    /// `cluster_state:ok` on every node.
    pub(crate) fn start() -> Result<Self> {
        let nodes = (0..3).map(|_| Node::start(true)).collect::<Result<Vec<_>>>()?;
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .map_err(|e| format!("running redis-cli --cluster create (is redis-cli installed?): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        wait_until("Redis Cluster (cluster_state:ok)", Duration::from_secs(20), || {
            ports.iter().all(|p| raw_cmd(*p, "CLUSTER INFO").is_some_and(|r| r.contains("cluster_state:ok")))
        })?;
        Ok(Self { nodes })
    }

    /// The nodes' URLs.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }
}

/// Keeps the services of [`test_env`] alive; dropping it stops them.
pub(crate) struct Guards {
    _standalone: RedisStandalone,
    _cluster: RedisCluster,
}

/// Starts the services tests need and returns the environment variables that point at them
/// (`STRATA_TEST_REDIS_URL`, `STRATA_TEST_REDIS_CLUSTER` as comma-separated URLs).
pub(crate) fn test_env() -> Result<(Vec<(String, String)>, Guards)> {
    let standalone = RedisStandalone::start()?;
    let cluster = RedisCluster::start()?;
    let env = vec![
        ("STRATA_TEST_REDIS_URL".to_owned(), standalone.url()),
        ("STRATA_TEST_REDIS_CLUSTER".to_owned(), cluster.urls().join(",")),
    ];
    Ok((env, Guards { _standalone: standalone, _cluster: cluster }))
}
