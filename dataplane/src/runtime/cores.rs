//! How many workers a proxy should run by default: the cores this process may actually use.
//!
//! A sidecar limited to one CPU on a 64-core node must run one worker, not 64: more workers
//! than CPU quota only adds context switches and cache misses to the tail. So the default is the
//! smaller of the process's CPU affinity set and its cgroup v2 `cpu.max` quota (rounded up).
//! Runs once at start-up; never on the request path.

use std::path::Path;

/// Cores the process may run on, from `sched_getaffinity`.
pub fn affinity_cores() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most `size_of::<cpu_set_t>()` bytes into `set`, its size.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `i` is below CPU_SETSIZE, the set's capacity.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

/// The cgroup v2 CPU quota in whole cores (rounded up), if one is set.
pub fn cgroup_quota_cores() -> Option<usize> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // cgroup v2 has a single line "0::/path".
    let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    // The quota may be set on any ancestor; the tightest one wins.
    let mut best: Option<usize> = None;
    let mut cur = Some(dir.as_path());
    while let Some(d) = cur {
        if let Ok(text) = std::fs::read_to_string(d.join("cpu.max")) {
            if let Some(cores) = parse_cpu_max(&text) {
                best = Some(best.map_or(cores, |b| b.min(cores)));
            }
        }
        if d == Path::new("/sys/fs/cgroup") {
            break;
        }
        cur = d.parent();
    }
    best
}

/// Parses cgroup v2 `cpu.max` ("max 100000" or "150000 100000") into whole cores, rounded up.
pub fn parse_cpu_max(text: &str) -> Option<usize> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period: u64 = parts.next()?.parse().ok()?;
    if quota == "max" || period == 0 {
        return None;
    }
    let quota: u64 = quota.parse().ok()?;
    Some((quota.div_ceil(period)).max(1) as usize)
}

/// The default worker count: min(affinity set, cgroup quota), at least 1.
pub fn default_workers() -> usize {
    let affinity = affinity_cores().len().max(1);
    match cgroup_quota_cores() {
        Some(q) => affinity.min(q).max(1),
        None => affinity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_parsing() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("100000 100000\n"), Some(1));
        assert_eq!(parse_cpu_max("150000 100000"), Some(2));
        assert_eq!(parse_cpu_max("50000 100000"), Some(1));
        assert_eq!(parse_cpu_max("400000 100000"), Some(4));
        assert_eq!(parse_cpu_max("garbage"), None);
        assert_eq!(parse_cpu_max("100 0"), None);
    }

    #[test]
    fn default_is_within_affinity() {
        let n = default_workers();
        assert!(n >= 1);
        assert!(n <= affinity_cores().len().max(1));
    }
}
