//! The processes under test: nginx and reviewloop started as children on loopback, stopped when
//! dropped (or when the benchmark is interrupted), and their cost read from /proc.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The pids of every child still running, so a signal handler can stop them all.
#[derive(Clone, Default)]
pub struct Children(Arc<Mutex<Vec<u32>>>);

impl Children {
    fn add(&self, pid: u32) {
        self.0.lock().expect("not poisoned").push(pid);
    }

    fn remove(&self, pid: u32) {
        self.0.lock().expect("not poisoned").retain(|p| *p != pid);
    }

    /// SIGTERM to every child still running (from a signal handler's task).
    pub fn terminate_all(&self) {
        for pid in self.0.lock().expect("not poisoned").iter() {
            signal(*pid, "TERM");
        }
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// A child process stopped (TERM, then KILL after 5 s) when dropped.
pub struct Guarded {
    child: Child,
    children: Children,
    pub name: String,
}

impl Guarded {
    pub fn spawn(name: &str, mut command: Command, children: &Children) -> anyhow::Result<Self> {
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}: {command:?}"))?;
        children.add(child.id());
        Ok(Guarded {
            child,
            children: children.clone(),
            name: name.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the child has already exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited: {status}", self.name),
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let pid = self.child.id();
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(pid, "TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.children.remove(pid);
    }
}

/// A free port on 127.0.0.1, for a program that cannot listen on port 0 and report it (nginx).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn wait_listening(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on {addr} after {within:?}")
}

/// A command that runs `program` on the CPUs `cpus` (a `taskset` list such as `0` or `1-3`)
/// when given: taskset execs the program, so the pid is the program's.
pub fn command_on(cpus: Option<&str>, program: &Path) -> Command {
    match cpus {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpus).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Moves every thread of process `pid` onto `cpus` (threads started later inherit it).
pub fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("cannot run taskset (Debian: util-linux)")?;
    if !status.success() {
        bail!("taskset -c {cpus} on pid {pid} failed: {status}");
    }
    Ok(())
}

/// nginx as a plain reverse proxy: as many workers as cores (reviewloop's runtime has as many
/// threads) unless `workers` says otherwise (one when pinned to one core), keep-alive to the
/// upstream and to clients, no access log, no buffering to disk.
pub fn nginx_config(dir: &Path, listen: u16, upstream: SocketAddr, workers: &str) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000;
    upstream model {{
        server {upstream};
        keepalive 256;
        keepalive_requests 100000;
    }}
    server {{
        listen 127.0.0.1:{listen} backlog=4096;
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

/// nginx on `cpus` when given (then with one worker: the core it is pinned to).
pub fn start_nginx(
    nginx: &Path,
    dir: &Path,
    upstream: SocketAddr,
    cpus: Option<&str>,
    children: &Children,
) -> anyhow::Result<(Guarded, SocketAddr)> {
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    let workers = if cpus.is_some() { "1" } else { "auto" };
    fs::write(&conf, nginx_config(dir, port, upstream, workers))?;
    let mut command = command_on(cpus, nginx);
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(dir.join("stderr.log"))?));
    let mut child = Guarded::spawn("nginx", command, children)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr, Duration::from_secs(10)).and_then(|()| child.check_alive())?;
    Ok((child, addr))
}

/// A reviewloop proxy process and where it listens.
pub struct Reviewloop {
    pub process: Guarded,
    pub data: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts `reviewloop proxy` with built-in defaults and `env` overrides, on 127.0.0.1:0, and
/// waits for its listening addresses (from its JSON log) and for `/readyz`. On `cpus` when given
/// (its runtime then sizes itself to them: std's `available_parallelism` reads the affinity).
pub fn start_reviewloop(
    name: &str,
    binary: &Path,
    env: &[(String, String)],
    cpus: Option<&str>,
    log: PathBuf,
    children: &Children,
) -> anyhow::Result<Reviewloop> {
    let mut command = command_on(cpus, binary);
    command
        .args(["--log-format", "json", "proxy"])
        .env("RUST_LOG", "info")
        .env("REVIEWLOOP__SERVER__LISTEN", "127.0.0.1:0")
        .env("REVIEWLOOP__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        // As the Dockerfile sets them: mimalloc's memory returned at once (peak RSS).
        .env("MIMALLOC_PURGE_DELAY", "0")
        .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(&log)?));
    let mut process = Guarded::spawn(name, command, children)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut data, mut admin) = (None, None);
    while data.is_none() || admin.is_none() {
        if Instant::now() > deadline {
            bail!(
                "{name}: no listening addresses logged in 30 s; see {}",
                log.display()
            );
        }
        process
            .check_alive()
            .with_context(|| format!("see {}", log.display()))?;
        for line in BufReader::new(fs::File::open(&log)?).lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line?) else {
                continue;
            };
            // tracing-subscriber's JSON puts fields at the top level or under "fields".
            let fields = if entry["fields"].is_object() {
                &entry["fields"]
            } else {
                &entry
            };
            let address = fields["address"].as_str().and_then(|a| a.parse().ok());
            match fields["message"].as_str() {
                Some("proxy listening") => data = address,
                Some("admin listening") => admin = address,
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (data, admin) = (data.expect("set"), admin.expect("set"));
    while !crate::load::get_ok(admin, "/readyz") {
        if Instant::now() > deadline {
            bail!(
                "{name}: /readyz not ready in 30 s (Kafka reachable?); see {}",
                log.display()
            );
        }
        process.check_alive()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Reviewloop {
        process,
        data,
        admin,
    })
}

/// User + system CPU time of a process and all its descendants (nginx's workers), in seconds.
pub fn cpu_seconds(root: u32) -> f64 {
    let ticks: u64 = tree(root).iter().filter_map(|pid| stat_ticks(*pid)).sum();
    ticks as f64 / clock_ticks_per_second()
}

/// Peak resident memory (VmHWM) of a process and all its descendants, in bytes. For nginx this
/// adds the workers' peaks; pages they share are counted once per process.
pub fn peak_rss_bytes(root: u32) -> u64 {
    tree(root)
        .iter()
        .filter_map(|pid| status_kb(*pid, "VmHWM:"))
        .sum::<u64>()
        * 1024
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime (fields 14 and 15 of /proc/PID/stat; 3rd field after the name is ppid).
fn stat_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// `root` and its descendants, from the ppid of every process in /proc.
pub fn tree(root: u32) -> Vec<u32> {
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                parents.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        if let Some(kids) = parents.get(&found[i]) {
            found.extend(kids);
        }
        i += 1;
    }
    found
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}
