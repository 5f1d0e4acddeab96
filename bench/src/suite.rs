//! `--suite FILE`: a benchmark suite written down as YAML instead of flags.
//!
//! A suite file names the same settings as the command-line flags, with the same spelling
//! (`throughput-connections`, `idle-connections`, …) and the same value syntax (`4s`,
//! `500ms`, `0,1`), so a suite is a saved command line that can be reviewed and versioned.
//! Precedence is built-in default < suite file < flag typed on the command line. The format
//! is ours, so an unknown key is an error naming the key (serde's `deny_unknown_fields`),
//! never silently ignored; values are checked together with the flags by the same
//! validation. `bench/suites/default.yaml` spells out the built-in default suite and a unit
//! test keeps the two equal.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use crate::BenchArgs;

/// A duration: `"4s"`, `"500ms"`, or a bare number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Seconds(f64),
    Text(String),
}

impl DurationValue {
    fn get(&self, key: &str) -> anyhow::Result<Duration> {
        let parsed = match self {
            DurationValue::Seconds(s) => ringmesh_loadgen::parse_duration(&s.to_string()),
            DurationValue::Text(t) => ringmesh_loadgen::parse_duration(t),
        };
        parsed.map_err(|e| anyhow::anyhow!("{key}: {e}"))
    }
}

/// A CPU list: `[0, 1]` or `"0,2-3"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum CpuList {
    List(Vec<usize>),
    Text(String),
}

/// The suite file. Every key is optional; a missing key keeps the built-in default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Suite {
    scenarios: Option<Vec<String>>,
    protocols: Option<Vec<String>>,
    h2_streams: Option<usize>,
    repeats: Option<usize>,
    rate: Option<f64>,
    mesh_rate: Option<f64>,
    duration: Option<DurationValue>,
    warmup: Option<DurationValue>,
    connections: Option<usize>,
    throughput_connections: Option<usize>,
    throughput_duration: Option<DurationValue>,
    throughput_warmup: Option<DurationValue>,
    proxy_workers: Option<usize>,
    load_threads: Option<usize>,
    /// `null` (or absent) means unpinned.
    #[serde(default, deserialize_with = "nullable")]
    cpus: Option<Option<CpuList>>,
    idle_connections: Option<usize>,
    body_size: Option<usize>,
    wrk_duration: Option<DurationValue>,
    worker_spread_duration: Option<DurationValue>,
    worker_spread_protocol: Option<String>,
}

/// Distinguishes `cpus: null` (explicitly unpinned) from an absent key.
fn nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<CpuList>>, D::Error> {
    Option::<CpuList>::deserialize(d).map(Some)
}

impl Suite {
    /// Parses a suite from YAML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Suite> {
        if text.trim().is_empty() {
            return Ok(Suite::default());
        }
        serde_yaml::from_str(text).with_context(|| format!("suite {origin}"))
    }

    /// Reads and parses a suite file.
    pub fn load(path: &Path) -> anyhow::Result<Suite> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading suite {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// True when every key is present (the default suite file must spell out everything).
    pub fn is_complete(&self) -> bool {
        self.scenarios.is_some()
            && self.protocols.is_some()
            && self.h2_streams.is_some()
            && self.repeats.is_some()
            && self.rate.is_some()
            && self.mesh_rate.is_some()
            && self.duration.is_some()
            && self.warmup.is_some()
            && self.connections.is_some()
            && self.throughput_connections.is_some()
            && self.throughput_duration.is_some()
            && self.throughput_warmup.is_some()
            && self.proxy_workers.is_some()
            && self.load_threads.is_some()
            && self.cpus.is_some()
            && self.idle_connections.is_some()
            && self.body_size.is_some()
            && self.wrk_duration.is_some()
            && self.worker_spread_duration.is_some()
            && self.worker_spread_protocol.is_some()
    }

    /// Writes the suite's values into `args`, except where `from_command_line(field)` says
    /// the flag was typed (flags win). Reports every bad value at once, by key.
    pub fn apply(&self, args: &mut BenchArgs, from_command_line: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let keep = |id: &str| !from_command_line(id);
        macro_rules! set {
            ($field:ident) => {
                if let Some(v) = &self.$field {
                    if keep(stringify!($field)) {
                        args.$field = v.clone();
                    }
                }
            };
        }
        macro_rules! set_duration {
            ($field:ident, $key:literal) => {
                if let Some(v) = &self.$field {
                    match v.get($key) {
                        Ok(d) if keep(stringify!($field)) => args.$field = d,
                        Ok(_) => {}
                        Err(e) => problems.push(e.to_string()),
                    }
                }
            };
        }
        set!(scenarios);
        set!(protocols);
        set!(h2_streams);
        set!(repeats);
        set!(rate);
        set!(mesh_rate);
        set_duration!(duration, "duration");
        set_duration!(warmup, "warmup");
        set!(connections);
        set!(throughput_connections);
        set_duration!(throughput_duration, "throughput-duration");
        set_duration!(throughput_warmup, "throughput-warmup");
        set_duration!(wrk_duration, "wrk-duration");
        set_duration!(worker_spread_duration, "worker-spread-duration");
        set!(worker_spread_protocol);
        set!(proxy_workers);
        set!(load_threads);
        set!(idle_connections);
        set!(body_size);
        if let Some(cpus) = &self.cpus {
            let parsed = match cpus {
                None => Ok(None),
                Some(CpuList::List(l)) => Ok(Some(l.clone())),
                Some(CpuList::Text(t)) => ringmesh_loadgen::parse_cpus(t).map(Some),
            };
            match parsed {
                Ok(c) if keep("cpus") => args.cpus = c,
                Ok(_) => {}
                Err(e) => problems.push(format!("cpus: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("suite: {}", problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const DEFAULT_SUITE: &str = include_str!("../suites/default.yaml");

    fn defaults() -> BenchArgs {
        BenchArgs::try_parse_from(["ringmesh-bench"]).unwrap()
    }

    #[test]
    fn default_suite_file_spells_out_the_built_in_default() {
        let suite = Suite::parse(DEFAULT_SUITE, "default.yaml").unwrap();
        assert!(suite.is_complete(), "bench/suites/default.yaml must name every key");
        let mut a = defaults();
        // Start from values that differ everywhere, so every key must set its field.
        a.scenarios = vec!["direct".into()];
        a.protocols = vec!["http1".into()];
        a.h2_streams = 99;
        a.repeats = 99;
        a.rate = 1.0;
        a.mesh_rate = 7.0;
        a.duration = Duration::from_secs(99);
        a.warmup = Duration::from_secs(99);
        a.connections = 99;
        a.throughput_connections = 99;
        a.throughput_duration = Duration::from_secs(99);
        a.throughput_warmup = Duration::from_secs(99);
        a.proxy_workers = 99;
        a.load_threads = 99;
        a.cpus = Some(vec![7]);
        a.idle_connections = 99;
        a.body_size = 99;
        a.wrk_duration = Duration::from_secs(99);
        a.worker_spread_duration = Duration::from_secs(99);
        a.worker_spread_protocol = "grpc".into();
        suite.apply(&mut a, |_| false).unwrap();
        assert_eq!(a, defaults());
    }

    #[test]
    fn unknown_keys_are_named_and_flags_win() {
        let e = Suite::parse("rate: 100\nidle-conections: 5\n", "x.yaml").unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("idle-conections"), "{msg}");
        assert!(msg.contains("x.yaml"), "{msg}");

        let s = Suite::parse(
            "rate: 500\nmesh-rate: 0\nduration: 2s\nthroughput-warmup: 0.1\ncpus: \"0,2-3\"\nscenarios: [direct, mesh]\nprotocols: [grpc]\n",
            "y",
        )
        .unwrap();
        let mut a = defaults();
        s.apply(&mut a, |id| id == "rate").unwrap();
        assert_eq!(a.rate, defaults().rate, "a typed --rate wins over the suite");
        assert_eq!(a.mesh_rate, 0.0, "mesh-rate: 0 skips the pass");
        assert_eq!(defaults().mesh_rate, 1000.0);
        let mut typed = defaults();
        typed.mesh_rate = 800.0;
        s.apply(&mut typed, |id| id == "mesh_rate").unwrap();
        assert_eq!(typed.mesh_rate, 800.0, "a typed --mesh-rate wins over the suite");
        assert_eq!(a.duration, Duration::from_secs(2));
        assert_eq!(a.throughput_warmup, Duration::from_millis(100));
        assert_eq!(a.cpus, Some(vec![0, 2, 3]));
        assert_eq!(a.scenarios, ["direct", "mesh"]);
        assert_eq!(a.protocols, ["grpc"]);

        let bad = Suite::parse("duration: soon\ncpus: \"3-1\"\n", "z").unwrap();
        let msg = bad.apply(&mut defaults(), |_| false).unwrap_err().to_string();
        assert!(msg.contains("duration") && msg.contains("cpus"), "{msg}");
        assert!(Suite::parse("repeats: many\n", "w").is_err());
    }
}
