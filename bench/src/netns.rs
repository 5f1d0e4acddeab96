//! Network namespaces the suite makes for itself (the `captured` row's), and how code runs in one.
//!
//! A namespace is made with `ip netns add` (so it has a name under `/run/netns/` that `ip netns
//! exec` and `ip -n` understand) and deleted when its [`NetNs`] guard drops: at the end of the
//! run, on an error, and after Ctrl-C (which only stops the suite's loops; the guards still drop).
//! A run killed outright leaves its namespace behind: [`sweep_stale`] deletes those of dead runs
//! (named after their process id) when the next run makes one.
//!
//! On Linux a network namespace belongs to a thread, and a new thread starts in its creator's.
//! [`NetNs::run`] therefore runs a closure on a fresh thread that first joins the namespace
//! (`setns`): the load generator started there connects from inside, and so do the worker
//! threads it starts. The calling thread never changes namespace, and child processes are
//! started from it with `ip netns exec`, so that their parent-death signal is tied to a thread
//! that lives as long as the suite.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// A network namespace made by the suite, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    /// `ip`, found once.
    ip: PathBuf,
    /// `/run/netns/NAME`, open for `setns`; `None` only while [`NetNs::create`] runs.
    file: Option<File>,
}

impl NetNs {
    /// `ip netns add NAME`, then opens it. `name` should start with `prefix-<this pid>` (see
    /// [`sweep_stale`]).
    pub fn create(ip: &Path, name: &str) -> anyhow::Result<NetNs> {
        run_ip(ip, &["netns", "add", name])?;
        // From here on the guard deletes it, whatever fails next.
        let mut ns = NetNs {
            name: name.to_owned(),
            ip: ip.to_owned(),
            file: None,
        };
        let path = Path::new(NETNS_DIR).join(name);
        ns.file = Some(File::open(&path).with_context(|| format!("opening {}", path.display()))?);
        Ok(ns)
    }

    /// Its name (`ip netns exec NAME`, `ip -n NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS…`: configures the namespace's links, addresses and routes.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ip(&self.ip, &all)
    }

    /// The program and arguments that run `program args…` inside the namespace
    /// (`ip netns exec NAME program args…`), for [`crate::procs::Proc::spawn`] or a `Command`.
    pub fn exec(&self, program: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
        let mut all = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            self.name.clone(),
            program.display().to_string(),
        ];
        all.extend_from_slice(args);
        (self.ip.clone(), all)
    }

    /// Runs `f` on a new thread that has joined the namespace, and returns what it returns.
    /// Threads `f` starts are in the namespace too. Errors only when the thread cannot join it
    /// or cannot be started; a panic in `f` is passed on.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let fd = self.file.as_ref().context("the namespace is not open")?.as_raw_fd();
        let name = &self.name;
        std::thread::scope(|s| {
            let thread = std::thread::Builder::new()
                .name(format!("netns-{name}"))
                .spawn_scoped(s, move || -> anyhow::Result<T> {
                    // SAFETY: setns(2) on a descriptor this guard keeps open for the thread's
                    // lifetime (the scope ends before `self` can drop); it changes this thread's
                    // network namespace only.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        let e = std::io::Error::last_os_error();
                        bail!("joining network namespace {name} (setns): {e}");
                    }
                    Ok(f())
                })
                .with_context(|| format!("starting a thread for network namespace {name}"))?;
            thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Processes still inside keep the namespace alive, unnamed, until they exit; its owners
        // stop them first (the `captured` row drops its processes before its namespace).
        self.file = None;
        if let Err(e) = run_ip(&self.ip, &["netns", "delete", &self.name]) {
            eprintln!(
                "ringmesh-bench: could not delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// Runs `ip ARGS…`; its stderr is the error.
fn run_ip(ip: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(ip)
        .args(args)
        .output()
        .with_context(|| format!("running {} {}", ip.display(), args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The namespace names of dead runs among `names`: `<prefix>-<pid>` or `<prefix>-<pid>-<rest>`
/// where no process `pid` is alive (`alive`).
pub fn stale<'a>(names: impl IntoIterator<Item = &'a str>, prefix: &str, alive: impl Fn(u32) -> bool) -> Vec<&'a str> {
    names
        .into_iter()
        .filter(|name| {
            let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
                return false;
            };
            let pid = rest.split('-').next().unwrap_or_default();
            pid.parse::<u32>().is_ok_and(|pid| !alive(pid))
        })
        .collect()
}

/// Deletes the namespaces a killed run of the suite left behind (see [`stale`]); best effort,
/// each one it deletes said on stderr.
pub fn sweep_stale(ip: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    let names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    for name in stale(names.iter().map(String::as_str), prefix, alive) {
        match run_ip(ip, &["netns", "delete", name]) {
            Ok(()) => eprintln!("ringmesh-bench: deleted network namespace {name}, left by a run that was killed"),
            Err(e) => eprintln!("ringmesh-bench: could not delete stale network namespace {name}: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_namespaces_of_dead_runs_are_stale() {
        let names = [
            "rmbench-10",
            "rmbench-10-h2",
            "rmbench-11",
            "rmbench-x",
            "rmbench",
            "rmsc-a-10",
            "other-10",
        ];
        let alive = |pid: u32| pid == 11;
        assert_eq!(stale(names, "rmbench", alive), ["rmbench-10", "rmbench-10-h2"]);
    }
}
