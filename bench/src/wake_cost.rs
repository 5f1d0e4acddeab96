//! What one sleep and wake-up costs on this machine, measured beside every suite run.
//!
//! A proxy at a moderate rate sleeps and is woken at least once per request, so the price the
//! kernel (and, on a virtual machine, the hypervisor) charges for that sets the floor of its
//! CPU per request and part of its added latency. The price differs by an order of magnitude
//! between machines — a bare-metal core, a KVM guest, a guest nested inside another — so the
//! report states it next to the figures it bounds.
//!
//! Two threads hand one byte back and forth over a pair of pipes, each blocking in `read` until
//! the other writes: every round trip is two sleeps and two wake-ups. Measured once with both
//! threads on one CPU (a wake-up is a switch on the same core) and once on two CPUs (a
//! wake-up crosses cores, as between a proxy and its peers when unpinned).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One placement's result.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RoundTrip {
    /// Wall time per round trip, µs.
    pub wall_us: f64,
    /// CPU time of both threads per round trip, µs.
    pub cpu_us: f64,
}

/// Both placements; `cross_cpu` is absent when the process may use only one CPU.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WakeCost {
    /// Round trips measured per placement.
    pub round_trips: u32,
    /// Both threads pinned to the first allowed CPU.
    pub same_cpu: RoundTrip,
    /// The threads pinned to the first two allowed CPUs.
    pub cross_cpu: Option<RoundTrip>,
}

impl WakeCost {
    /// Measures both placements, `round_trips` each.
    pub fn measure(round_trips: u32) -> io::Result<WakeCost> {
        let cpus = ringmesh_proxy::runtime::cores::affinity_cores();
        let first = cpus.first().copied().unwrap_or(0);
        Ok(WakeCost {
            round_trips,
            same_cpu: ping_pong(round_trips, first, first)?,
            cross_cpu: match cpus.get(1) {
                Some(&second) => Some(ping_pong(round_trips, first, second)?),
                None => None,
            },
        })
    }

    /// One line for the report's machine section.
    pub fn describe(&self) -> String {
        let one = |r: RoundTrip| format!("{:.1} µs CPU ({:.1} µs wall)", r.cpu_us, r.wall_us);
        let cross = self.cross_cpu.map_or_else(|| "one CPU allowed".to_owned(), one);
        format!(
            "same CPU {}, across CPUs {cross} per round trip of two sleeps and wake-ups \
             (two threads, pipe ping-pong, {} round trips)",
            one(self.same_cpu),
            self.round_trips
        )
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded; both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads one byte then writes it, or the other way round, `n` times; returns this thread's CPU.
fn bounce(n: u32, cpu: usize, read: &OwnedFd, write: &OwnedFd, read_first: bool) -> io::Result<Duration> {
    ringmesh_loadgen::pin_current_thread(cpu)?;
    let mut byte = [0u8; 1];
    let start = thread_cpu();
    for _ in 0..n {
        for step in [read_first, !read_first] {
            // SAFETY: one byte into / out of a one-byte buffer on open pipe ends.
            let rc = unsafe {
                if step {
                    libc::read(read.as_raw_fd(), byte.as_mut_ptr().cast(), 1)
                } else {
                    libc::write(write.as_raw_fd(), byte.as_ptr().cast(), 1)
                }
            };
            if rc != 1 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(thread_cpu().saturating_sub(start))
}

/// This thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, nanosecond resolution).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn ping_pong(n: u32, cpu_a: usize, cpu_b: usize) -> io::Result<RoundTrip> {
    let (a_read, b_write) = pipe()?;
    let (b_read, a_write) = pipe()?;
    let started = Instant::now();
    // Both sides on threads of their own: pinning the caller would pin the whole suite.
    let (a, b) = std::thread::scope(|s| {
        let b = s.spawn(|| bounce(n, cpu_b, &b_read, &b_write, true));
        let a = s.spawn(|| bounce(n, cpu_a, &a_read, &a_write, false));
        let joined = |r: std::thread::Result<io::Result<Duration>>| {
            r.unwrap_or_else(|_| Err(io::Error::other("ping-pong thread panicked")))
        };
        (joined(a.join()), joined(b.join()))
    });
    let wall = started.elapsed();
    let cpu = a? + b?;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(n.max(1));
    Ok(RoundTrip {
        wall_us: per(wall),
        cpu_us: per(cpu),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_are_counted_and_cost_something() {
        let c = WakeCost::measure(200).unwrap();
        assert_eq!(c.round_trips, 200);
        assert!(c.same_cpu.cpu_us > 0.0 && c.same_cpu.wall_us > 0.0, "{c:?}");
        if let Some(x) = c.cross_cpu {
            assert!(x.wall_us > 0.0, "{c:?}");
        }
        let line = c.describe();
        assert!(line.contains("same CPU") && line.contains("200 round trips"), "{line}");
    }
}
