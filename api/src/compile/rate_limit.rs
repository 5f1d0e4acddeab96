//! ringmesh's `localRateLimit` (on a VirtualService `http[]` route and on a `ProxyConfig`
//! listener): Envoy's `local_ratelimit` token bucket as a first-class field, since Istio has
//! it only through an EnvoyFilter. Each limit gets an id, the index of its bucket in the
//! proxy's table (`dataplane/src/limits.rs`), and a key naming where it was written, by which
//! a reload keeps an unchanged bucket.

use std::time::Duration;

use super::{Compiler, Site};
use crate::locate::FieldPath;
use crate::resources::LocalRateLimit as Spec;
use crate::snapshot::LocalRateLimit;

/// Envoy refuses a `fill_interval` below 50 ms; so do we (a finer interval only costs).
pub(super) const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

impl Compiler {
    /// Checks a `localRateLimit`; `key` names where it is written.
    pub(super) fn local_rate_limit(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        spec: &Spec,
        key: String,
    ) -> Option<LocalRateLimit> {
        let mut ok = true;
        let mut count = |field: &str, value: Option<i64>, default: Option<u32>| -> Option<u32> {
            match (value, default) {
                (None, Some(d)) => Some(d),
                (None, None) => {
                    self.error(site, &p.key(field), format!("{field} is required"));
                    ok = false;
                    None
                }
                (Some(n), _) => match u32::try_from(n) {
                    Ok(n) if n > 0 => Some(n),
                    _ => {
                        self.error(
                            site,
                            &p.key(field),
                            format!("{field} must be a number from 1 to 4294967295, got {n}"),
                        );
                        ok = false;
                        None
                    }
                },
            }
        };
        let max_tokens = count("maxTokens", spec.max_tokens, None);
        let tokens_per_fill = count("tokensPerFill", spec.tokens_per_fill, Some(1));
        let fill_interval = match &spec.fill_interval {
            None => {
                self.error(site, &p.key("fillInterval"), "fillInterval is required");
                None
            }
            Some(text) => match self.duration(site, &p.key("fillInterval"), text) {
                Some(d) if d < MIN_FILL_INTERVAL => {
                    self.error(
                        site,
                        &p.key("fillInterval"),
                        format!("fillInterval must be at least 50ms (as Envoy requires), got {text}"),
                    );
                    None
                }
                d => d,
            },
        };
        let (max_tokens, tokens_per_fill, fill_interval) = match (max_tokens, tokens_per_fill, fill_interval) {
            (Some(m), Some(t), Some(f)) if ok => (m, t, f),
            _ => return None,
        };
        let id = self.rate_limits;
        self.rate_limits += 1;
        Some(LocalRateLimit {
            id,
            key,
            max_tokens,
            tokens_per_fill,
            fill_interval,
            grpc_resource_exhausted: spec.rate_limited_as_resource_exhausted.unwrap_or(false),
        })
    }
}
