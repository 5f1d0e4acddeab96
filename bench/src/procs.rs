//! Child processes of the benchmark and what the kernel says about them.
//!
//! Every server in a topology runs as its own process — the echo upstream and the ringmesh
//! proxy as re-executions of this very binary in a role (`__echo`, `__proxy`), haproxy and
//! nginx as themselves — so that each one's CPU time and resident memory can be read from
//! `/proc` without the load generator's threads mixed in. This module starts them (with the
//! open-file limit raised and an optional CPU pin applied before `exec`), waits until they
//! answer, samples `/proc/PID/stat` and `/proc/PID/status` over the whole process tree
//! (nginx has a master and a worker), and stops them, tree and all, when dropped.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

/// Open files each child may have: room for the idle-connection test on both sides.
pub const NOFILE_WANT: u64 = 262_144;

/// A running child process (and its descendants), stopped on drop.
#[derive(Debug)]
pub struct Proc {
    /// Role name used in messages and log file names (`echo`, `ringmesh`, `haproxy`, …).
    pub role: String,
    child: Child,
    stderr_path: PathBuf,
}

impl Proc {
    /// Starts `program args…` with stdout/stderr captured to `<log_dir>/<role>.{stdout,stderr}.log`,
    /// `RLIMIT_NOFILE` raised and, if `cpu` is set, pinned to that CPU.
    pub fn spawn(
        role: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
        cpu: Option<usize>,
    ) -> anyhow::Result<Self> {
        let stdout_path = log_dir.join(format!("{role}.stdout.log"));
        let stderr_path = log_dir.join(format!("{role}.stderr.log"));
        let stdout = fs::File::create(&stdout_path).with_context(|| format!("creating {}", stdout_path.display()))?;
        let stderr = fs::File::create(&stderr_path).with_context(|| format!("creating {}", stderr_path.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        // Its own process group: Ctrl-C on the terminal reaches only the bench, which then
        // finishes its report and stops the children itself.
        cmd.process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe syscalls (prctl, setrlimit, sched_setaffinity) on stack data.
        unsafe {
            cmd.pre_exec(move || {
                // If the bench dies without stopping it (a second Ctrl-C, a kill), the child
                // gets SIGTERM instead of running on unsupervised.
                let _ = libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                let lim = libc::rlimit {
                    rlim_cur: NOFILE_WANT as libc::rlim_t,
                    rlim_max: NOFILE_WANT as libc::rlim_t,
                };
                // Best effort: without it the idle-connection figure is capped and says so.
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                if let Some(cpu) = cpu {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_ZERO(&mut set);
                    libc::CPU_SET(cpu, &mut set);
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {role}: {}", program.display()))?;
        Ok(Self {
            role: role.to_owned(),
            child,
            stderr_path,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the child's stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        if tail.is_empty() {
            format!("(stderr empty: {})", self.stderr_path.display())
        } else {
            tail
        }
    }

    /// The child's whole stderr so far.
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Errors (with the stderr tail) if the child has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); its stderr:\n{}", self.role, self.stderr_tail());
        }
        Ok(())
    }

    /// Polls `probe` every 20 ms until it returns true, the child dies, or `timeout` passes.
    pub fn wait_ready(&mut self, what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if probe() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {timeout:?} ({what}); its stderr:\n{}",
                    self.role,
                    self.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU time (user + system) of the process tree.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let ticks = clock_ticks();
        let mut total = 0u64;
        for pid in process_tree(self.pid()) {
            if let Ok((utime, stime)) = read_cpu_ticks(pid) {
                total += utime + stime;
            }
        }
        Ok(Duration::from_secs_f64(total as f64 / ticks as f64))
    }

    /// Resident memory (VmRSS) of the process tree, in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for pid in process_tree(self.pid()) {
            total += read_rss_kib(pid).unwrap_or(0);
        }
        if total == 0 {
            bail!("could not read VmRSS of {} (pid {})", self.role, self.pid());
        }
        Ok(total)
    }

    /// Number of processes in the tree.
    pub fn process_count(&self) -> usize {
        process_tree(self.pid()).len()
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let tree = process_tree(self.pid());
        for &pid in &tree {
            // SAFETY: plain kill(2) on pids we started (the root is our child, the others its
            // descendants, listed just above).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for &pid in &tree {
            if Path::new(&format!("/proc/{pid}")).exists() && pid != self.pid() {
                // SAFETY: as above; a descendant that ignored SIGTERM.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Clock ticks per second (`/proc` counts CPU time in them).
pub(crate) fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Fields after the command name in `/proc/PID/stat` (the name may contain spaces and
/// parentheses, so split after the last `)`).
fn stat_fields(pid: u32) -> anyhow::Result<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

/// (utime, stime) in clock ticks: fields 14 and 15 of `stat`, i.e. indexes 11 and 12 after
/// the command name.
pub fn read_cpu_ticks(pid: u32) -> anyhow::Result<(u64, u64)> {
    let f = stat_fields(pid)?;
    let get = |i: usize| -> anyhow::Result<u64> {
        f.get(i)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse()
            .map_err(|_| anyhow!("bad /proc/{pid}/stat field {i}"))
    };
    Ok((get(11)?, get(12)?))
}

/// VmRSS in KiB from `/proc/PID/status`.
pub fn read_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            let kb = v.split_whitespace().next().ok_or_else(|| anyhow!("empty VmRSS"))?;
            return Ok(kb.parse()?);
        }
    }
    bail!("no VmRSS in /proc/{pid}/status")
}

/// `root` and all its descendants, found by scanning every `/proc/*/stat` parent pid.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(f) = stat_fields(pid) {
                if let Some(ppid) = f.get(1).and_then(|p| p.parse::<u32>().ok()) {
                    parents.push((pid, ppid));
                }
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|&&(_, pp)| pp == p).map(|&(c, _)| c));
        i += 1;
    }
    tree
}

/// One blocking `GET` over a fresh connection; returns the status code. Used for readiness
/// probes, never for measurement.
pub fn http_get_status(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<u16> {
    http_get(addr, host, path).map(|(status, _)| status)
}

/// One blocking `GET` over a fresh connection (`Connection: close`), read to the end: the
/// status and the body. For a proxy's `/stats/prometheus` (the proof of a mesh hop), never for
/// measurement. Only `Content-Length` or close-delimited bodies are read as they are; a chunked
/// body comes back with its size lines, which a counter lookup by name tolerates.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: ringmesh-bench\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("not an HTTP response: {:?}", &text[..text.len().min(200)]))?;
    let code = head
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response: {head:?}"))?;
    Ok((code, body.to_owned()))
}

/// A free loopback port, found by binding port 0 and releasing it.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(read_rss_kib(me).unwrap() > 0);
        read_cpu_ticks(me).unwrap();
        assert_eq!(process_tree(me)[0], me);
    }

    #[test]
    fn child_tree_cpu_and_rss_are_sampled_and_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut p = Proc::spawn(
            "sleeper",
            Path::new("/bin/sh"),
            &["-c".into(), "sleep 30 & wait".into()],
            dir,
            None,
        )
        .unwrap();
        let pid = p.pid();
        p.wait_ready("child spawned", Duration::from_secs(5), || process_tree(pid).len() >= 2)
            .unwrap();
        assert!(p.rss_kib().unwrap() > 0);
        p.cpu_time().unwrap();
        let tree = process_tree(p.pid());
        drop(p);
        for pid in tree {
            // A killed process may take a moment to finish exiting; give it up to 2 s.
            let gone = || {
                let state = stat_fields(pid).ok().and_then(|f| f.first().cloned());
                state.is_none() || state.as_deref() == Some("Z")
            };
            ringmesh_testkit::eventually(Duration::from_secs(2), &format!("pid {pid} to exit"), gone).unwrap();
        }
    }
}
