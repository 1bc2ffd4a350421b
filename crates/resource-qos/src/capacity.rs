//! Capacity discovery: cgroup v2 limits, Kubernetes Downward API environment variables, host.
//!
//! For CPU and memory separately the first available source wins: a cgroup limit (`cpu.max`
//! quota/period; the lower of `memory.max` and `memory.high`), then the Downward API variables,
//! then the host (`available_parallelism`, `/proc/meminfo`). Configuration overrides all of them
//! (see `ManagerConfig::capacity`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::{QosError, ResourceList};

/// Where a discovered value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CapacitySource {
    /// A cgroup v2 limit.
    Cgroup,
    /// A Downward API environment variable.
    DownwardApi,
    /// The host (no limit found).
    Host,
}

/// The result of [`CapacityDiscovery::discover`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiscoveredCapacity {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Where the CPU value came from.
    pub cpu_source: CapacitySource,
    /// Memory in bytes (the effective admission capacity).
    pub memory_bytes: u64,
    /// Where the memory value came from.
    pub memory_source: CapacitySource,
    /// `memory.max`, when limited.
    pub memory_max_bytes: Option<u64>,
    /// `memory.high`, when limited.
    pub memory_high_bytes: Option<u64>,
}

impl DiscoveredCapacity {
    /// CPU and memory as a [`ResourceList`] for `ResourceManagerBuilder::discovered`.
    #[must_use]
    pub fn to_list(&self) -> ResourceList {
        ResourceList::new().cpu_millis(self.cpu_millis).memory_bytes(self.memory_bytes)
    }
}

type EnvFn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Discovers CPU and memory capacity. Every path and the environment are parameters, so tests
/// point it at fixture files.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("strata-doc-cg-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// std::fs::write(dir.join("cpu.max"), "150000 100000\n").unwrap();
/// std::fs::write(dir.join("memory.max"), "4294967296\n").unwrap();
/// let found = strata_resource_qos::CapacityDiscovery::new()
///     .cgroup_dir(&dir)
///     .env_source(|_| None)
///     .discover()?;
/// assert_eq!(found.cpu_millis, 1500);
/// assert_eq!(found.memory_bytes, 4 << 30);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), strata_resource_qos::QosError>(())
/// ```
#[derive(Clone)]
pub struct CapacityDiscovery {
    cgroup_dir: PathBuf,
    proc_dir: PathBuf,
    env: EnvFn,
    cpu_var: String,
    memory_var: String,
    cpu_divisor_millis: u64,
    memory_divisor_bytes: u64,
}

impl fmt::Debug for CapacityDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapacityDiscovery")
            .field("cgroup_dir", &self.cgroup_dir)
            .field("proc_dir", &self.proc_dir)
            .field("cpu_var", &self.cpu_var)
            .field("memory_var", &self.memory_var)
            .finish_non_exhaustive()
    }
}

impl Default for CapacityDiscovery {
    fn default() -> Self {
        Self::new()
    }
}

impl CapacityDiscovery {
    /// Reads this process's cgroup (from `/proc/self/cgroup` under `/sys/fs/cgroup`), `/proc`,
    /// and the process environment with the variables `CPU_LIMIT` (whole cores, the Downward
    /// API's default divisor `1`) and `MEMORY_LIMIT` (bytes).
    #[must_use]
    pub fn new() -> Self {
        let root = Path::new("/sys/fs/cgroup");
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::")).map(|p| root.join(p.trim_start_matches('/'))));
        let cgroup_dir = own.filter(|d| d.join("cpu.max").exists()).unwrap_or_else(|| root.to_path_buf());
        Self {
            cgroup_dir,
            proc_dir: PathBuf::from("/proc"),
            env: Arc::new(|k| std::env::var(k).ok()),
            cpu_var: "CPU_LIMIT".into(),
            memory_var: "MEMORY_LIMIT".into(),
            cpu_divisor_millis: 1000,
            memory_divisor_bytes: 1,
        }
    }

    /// The cgroup v2 directory holding `cpu.max`, `memory.max`, `memory.high`.
    #[must_use]
    pub fn cgroup_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cgroup_dir = dir.into();
        self
    }

    /// The proc directory holding `meminfo` (default `/proc`).
    #[must_use]
    pub fn proc_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.proc_dir = dir.into();
        self
    }

    /// Where environment variables are read from (default: the process environment).
    #[must_use]
    pub fn env_source(mut self, f: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.env = Arc::new(f);
        self
    }

    /// Names of the Downward API variables for the CPU and memory limits.
    #[must_use]
    pub fn downward_api_vars(mut self, cpu: &str, memory: &str) -> Self {
        self.cpu_var = cpu.to_owned();
        self.memory_var = memory.to_owned();
        self
    }

    /// The `divisor` used in the pod spec: millicores per unit of the CPU variable (1000 for
    /// divisor `1`, 1 for divisor `1m`) and bytes per unit of the memory variable (1, or 1048576
    /// for `1Mi`).
    #[must_use]
    pub fn divisors(mut self, cpu_millis: u64, memory_bytes: u64) -> Self {
        self.cpu_divisor_millis = cpu_millis.max(1);
        self.memory_divisor_bytes = memory_bytes.max(1);
        self
    }

    /// Discovers CPU and memory capacity.
    ///
    /// # Errors
    /// [`QosError::Discovery`] for malformed cgroup files or variables, or when host memory
    /// cannot be read and no other source has it.
    pub fn discover(&self) -> Result<DiscoveredCapacity, QosError> {
        let cg_cpu = self.read_cpu_max()?;
        let memory_max_bytes = self.read_limit("memory.max")?;
        let memory_high_bytes = self.read_limit("memory.high")?;
        let (cpu_millis, cpu_source) = match cg_cpu {
            Some(c) => (c, CapacitySource::Cgroup),
            None => match self.env_u64(&self.cpu_var, self.cpu_divisor_millis)? {
                Some(c) => (c, CapacitySource::DownwardApi),
                None => {
                    let n = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
                    (n * 1000, CapacitySource::Host)
                }
            },
        };
        let cg_mem = match (memory_max_bytes, memory_high_bytes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (memory_bytes, memory_source) = match cg_mem {
            Some(m) => (m, CapacitySource::Cgroup),
            None => match self.env_u64(&self.memory_var, self.memory_divisor_bytes)? {
                Some(m) => (m, CapacitySource::DownwardApi),
                None => (self.host_memory()?, CapacitySource::Host),
            },
        };
        Ok(DiscoveredCapacity {
            cpu_millis,
            cpu_source,
            memory_bytes,
            memory_source,
            memory_max_bytes,
            memory_high_bytes,
        })
    }

    fn read(&self, name: &str) -> Result<Option<String>, QosError> {
        match std::fs::read_to_string(self.cgroup_dir.join(name)) {
            Ok(s) => Ok(Some(s.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(QosError::Discovery(format!("reading {}: {e}", self.cgroup_dir.join(name).display()))),
        }
    }

    fn read_cpu_max(&self) -> Result<Option<u64>, QosError> {
        let Some(s) = self.read("cpu.max")? else { return Ok(None) };
        let bad = || QosError::Discovery(format!("cpu.max: expected \"<quota|max> <period>\", got {s:?}"));
        let mut it = s.split_whitespace();
        let quota = it.next().ok_or_else(bad)?;
        let period: u64 = match it.next() {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => 100_000,
        };
        if quota == "max" {
            return Ok(None);
        }
        let quota: u64 = quota.parse().map_err(|_| bad())?;
        if period == 0 || quota == 0 {
            return Err(bad());
        }
        Ok(Some((quota.saturating_mul(1000) / period).max(1)))
    }

    fn read_limit(&self, name: &str) -> Result<Option<u64>, QosError> {
        match self.read(name)? {
            None => Ok(None),
            Some(s) if s == "max" => Ok(None),
            Some(s) => match s.parse::<u64>() {
                Ok(0) | Err(_) => {
                    Err(QosError::Discovery(format!("{name}: expected a positive byte count or \"max\", got {s:?}")))
                }
                Ok(v) => Ok(Some(v)),
            },
        }
    }

    fn env_u64(&self, var: &str, mult: u64) -> Result<Option<u64>, QosError> {
        let Some(v) = (self.env)(var) else { return Ok(None) };
        match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(Some(n.saturating_mul(mult))),
            _ => {
                Err(QosError::Discovery(format!("Downward API variable {var}: expected a positive integer, got {v:?}")))
            }
        }
    }

    fn host_memory(&self) -> Result<u64, QosError> {
        let path = self.proc_dir.join("meminfo");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| QosError::Discovery(format!("reading {}: {e}", path.display())))?;
        text.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| QosError::Discovery(format!("{}: no MemTotal line", path.display())))
    }
}
