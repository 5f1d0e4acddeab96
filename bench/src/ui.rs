//! What the suite shows while it runs: a progress bar on a terminal, plain lines elsewhere.
//!
//! On a terminal (stderr is a tty) an `indicatif` bar counts the measurements (one per
//! scenario and round, then one per idle-connection test), with the current step as its
//! message and an ETA; result lines are printed above it. Anywhere else (CI logs, pipes)
//! the same result lines are printed plainly, one per event, and there is no bar.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use ringmesh_loadgen::RunControl;

/// The load run being watched, if any (read by the bar on every redraw).
type Watched = Arc<Mutex<Option<Arc<RunControl>>>>;

/// The suite's progress display.
#[derive(Debug)]
pub struct Ui {
    bar: Option<ProgressBar>,
    watched: Watched,
}

impl Ui {
    /// A display for `steps` steps; a bar only when `bar_allowed` and stderr is a terminal.
    pub fn new(steps: u64, bar_allowed: bool) -> Self {
        let watched: Watched = Arc::new(Mutex::new(None));
        if !(bar_allowed && ringmesh_loadgen::progress::stderr_is_terminal()) {
            return Self { bar: None, watched };
        }
        let bar = ProgressBar::new(steps.max(1));
        let live = watched.clone();
        let style = ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {elapsed} (eta {eta}) {msg}{live}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
            .with_key("live", move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                if let Some(c) = live.lock().ok().and_then(|g| g.clone()) {
                    let n = c.counts();
                    let _ = write!(w, " · {} responses, {} errors", n.done, n.errors);
                }
            });
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        Self {
            bar: Some(bar),
            watched,
        }
    }

    /// Shows the live counters of `control` beside the current step (`None` stops).
    pub fn watch(&self, control: Option<Arc<RunControl>>) {
        if let Ok(mut g) = self.watched.lock() {
            *g = control;
        }
    }

    /// Prints a line (above the bar, if there is one).
    pub fn line(&self, msg: impl AsRef<str>) {
        match &self.bar {
            Some(b) => b.println(msg.as_ref()),
            None => eprintln!("{}", msg.as_ref()),
        }
    }

    /// Says what is running now (the bar's message; nothing without a bar).
    pub fn step(&self, msg: impl Into<String>) {
        if let Some(b) = &self.bar {
            b.set_message(msg.into());
        }
    }

    /// One step done.
    pub fn advance(&self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    /// Changes the step count (when a scenario drops out).
    pub fn set_steps(&self, steps: u64) {
        if let Some(b) = &self.bar {
            b.set_length(steps.max(1));
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        self.finish();
    }
}
