//! Watching a load run while it runs, and stopping it early without losing what it measured.
//!
//! A [`RunControl`] is shared between the load threads and whoever watches them. The load
//! threads add to per-thread counters in it (one cache line per thread slot, so the threads
//! never write to the same line) and check its stop flag once per request; the watcher reads
//! the counters to draw a progress bar ([`ProgressView`]: an `indicatif` bar on a terminal,
//! a plain line every few seconds otherwise). Ctrl-C sets a process-wide flag from the signal
//! handler ([`install_interrupt_handler`]); every `RunControl` that watches it then stops its
//! run: no new request is sent, requests in flight finish (bounded by their timeout), and the
//! report covers the window up to the stop. A second Ctrl-C exits at once.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(sig: libc::c_int) {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // Second Ctrl-C: give the user the default behaviour (terminate) right away.
        // SAFETY: signal() and raise() are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return;
    }
    let msg = b"\ninterrupted: stopping and writing the results gathered so far (Ctrl-C again to quit now)\n";
    // SAFETY: write(2) is async-signal-safe; the buffer is a static byte string.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
}

/// Makes SIGINT (Ctrl-C) set the process-wide interrupt flag instead of killing the process.
/// Idempotent.
pub fn install_interrupt_handler() -> std::io::Result<()> {
    // SAFETY: installs a handler that only touches an atomic and calls async-signal-safe
    // functions; sa_mask is initialised with sigemptyset.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// True once Ctrl-C was pressed (after [`install_interrupt_handler`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Sets the process-wide interrupt flag as Ctrl-C would (for tests and embedders).
pub fn request_interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Counter slots; thread `i` writes slot `i % SLOTS`.
const SLOTS: usize = 64;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot {
    done: AtomicU64,
    errors: AtomicU64,
}

/// The run's timeline, set when the run starts.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// Load starts (warmup begins).
    pub t0: Instant,
    /// Measurement window opens.
    pub start: Instant,
    /// Measurement window closes.
    pub end: Instant,
}

/// Counts so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveCounts {
    /// Requests completed, any outcome, warmup included.
    pub done: u64,
    /// Of those, failures.
    pub errors: u64,
}

/// Shared between a run's load threads and its watchers: live counters and the stop flag.
#[derive(Debug)]
pub struct RunControl {
    stop: AtomicBool,
    watch_interrupt: bool,
    stopped_at: OnceLock<Instant>,
    timeline: OnceLock<Timeline>,
    slots: Box<[Slot]>,
}

impl Default for RunControl {
    fn default() -> Self {
        Self::new()
    }
}

impl RunControl {
    /// A control that also stops when Ctrl-C was pressed (see [`install_interrupt_handler`]).
    pub fn new() -> Self {
        Self {
            stop: AtomicBool::new(false),
            watch_interrupt: true,
            stopped_at: OnceLock::new(),
            timeline: OnceLock::new(),
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
        }
    }

    /// A control that ignores Ctrl-C and stops only through [`RunControl::stop`].
    pub fn ignoring_interrupt() -> Self {
        Self {
            watch_interrupt: false,
            ..Self::new()
        }
    }

    /// Asks the run to stop: no request is sent after this.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether the run was asked to stop (checked by the load threads before each request).
    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || (self.watch_interrupt && INTERRUPTED.load(Ordering::Relaxed))
    }

    /// Called by a load thread that saw the stop: the first call fixes the stop time.
    pub(crate) fn note_stopped(&self) {
        self.stopped_at.get_or_init(Instant::now);
    }

    /// When a load thread first saw the stop, if it did.
    pub fn stopped_at(&self) -> Option<Instant> {
        self.stopped_at.get().copied()
    }

    pub(crate) fn set_timeline(&self, t: Timeline) {
        let _ = self.timeline.set(t);
    }

    /// The run's timeline, once it started.
    pub fn timeline(&self) -> Option<Timeline> {
        self.timeline.get().copied()
    }

    /// Counts one completed request of load thread `thread`.
    pub(crate) fn count(&self, thread: usize, failed: bool) {
        let slot = &self.slots[thread % SLOTS];
        slot.done.fetch_add(1, Ordering::Relaxed);
        if failed {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts so far, summed over threads.
    pub fn counts(&self) -> LiveCounts {
        self.slots.iter().fold(LiveCounts::default(), |a, s| LiveCounts {
            done: a.done + s.done.load(Ordering::Relaxed),
            errors: a.errors + s.errors.load(Ordering::Relaxed),
        })
    }
}

/// Whether progress should be drawn as a bar: stderr is a terminal.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A thread that shows a run's progress until dropped or [`ProgressView::finish`]ed.
#[derive(Debug)]
pub struct ProgressView {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the bar is redrawn.
const BAR_TICK: Duration = Duration::from_millis(100);

impl ProgressView {
    /// Starts showing `control`'s progress on stderr: an `indicatif` bar when `bar_allowed`
    /// and stderr is a terminal, otherwise a plain line every `max(1 s, run/10)`.
    pub fn spawn(control: Arc<RunControl>, label: String, bar_allowed: bool) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let bar = bar_allowed && stderr_is_terminal();
        let thread = std::thread::Builder::new()
            .name("loadgen-progress".into())
            .spawn(move || {
                if bar {
                    draw_bar(&control, &label, &flag);
                } else {
                    print_lines(&control, &label, &flag);
                }
            })
            .ok();
        Self { done, thread }
    }

    /// Stops showing progress (clears the bar).
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ProgressView {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One status phrase: phase, responses, current rate and errors.
pub fn status_line(control: &RunControl, now: Instant, last: &mut (Instant, u64)) -> String {
    let c = control.counts();
    let dt = now.duration_since(last.0).as_secs_f64();
    let rate = if dt > 0.0 {
        (c.done - last.1.min(c.done)) as f64 / dt
    } else {
        0.0
    };
    *last = (now, c.done);
    let phase = match control.timeline() {
        None => "starting",
        Some(_) if control.is_stopped() => "stopping",
        Some(t) if now < t.start => "warmup",
        Some(t) if now < t.end => "measuring",
        Some(_) => "draining",
    };
    format!("{phase}: {} responses, {rate:.0} rps now, {} errors", c.done, c.errors)
}

fn elapsed_ms(control: &RunControl, now: Instant) -> (u64, u64) {
    match control.timeline() {
        Some(t) => (
            now.saturating_duration_since(t.t0).as_millis() as u64,
            t.end.saturating_duration_since(t.t0).as_millis() as u64,
        ),
        None => (0, 1),
    }
}

fn draw_bar(control: &RunControl, label: &str, done: &AtomicBool) {
    let bar = indicatif::ProgressBar::new(1);
    let style = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_owned());
    let mut last = (Instant::now(), 0);
    while !done.load(Ordering::SeqCst) {
        let now = Instant::now();
        let (pos, len) = elapsed_ms(control, now);
        bar.set_length(len.max(1));
        bar.set_position(pos.min(len));
        bar.set_message(format!(
            "{:.1}s/{:.1}s {}",
            pos as f64 / 1000.0,
            len as f64 / 1000.0,
            status_line(control, now, &mut last)
        ));
        std::thread::sleep(BAR_TICK);
    }
    bar.finish_and_clear();
}

fn print_lines(control: &RunControl, label: &str, done: &AtomicBool) {
    let mut last = (Instant::now(), 0);
    let mut next_print = None;
    while !done.load(Ordering::SeqCst) {
        let now = Instant::now();
        if let Some(t) = control.timeline() {
            let every = (t.end.saturating_duration_since(t.t0) / 10).max(Duration::from_secs(1));
            let at = *next_print.get_or_insert(t.t0 + every);
            if now >= at {
                let (pos, len) = elapsed_ms(control, now);
                eprintln!(
                    "{label}: {:.0}s/{:.0}s {}",
                    pos as f64 / 1000.0,
                    len as f64 / 1000.0,
                    status_line(control, now, &mut last)
                );
                next_print = Some(at + every);
            }
        }
        std::thread::sleep(BAR_TICK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_over_slots_and_stop_is_recorded_once() {
        let c = RunControl::ignoring_interrupt();
        for t in 0..200 {
            c.count(t, t % 4 == 0);
        }
        assert_eq!(c.counts(), LiveCounts { done: 200, errors: 50 });
        assert!(!c.is_stopped());
        c.stop();
        assert!(c.is_stopped());
        c.note_stopped();
        let first = c.stopped_at().unwrap();
        // A later call must keep the first time: make sure the clock has moved past it.
        ringmesh_testkit::eventually(Duration::from_secs(1), "the clock to move on", || {
            Instant::now() > first
        })
        .unwrap();
        c.note_stopped();
        assert_eq!(c.stopped_at(), Some(first));
    }
}
