//! `ProxyConfig.spec.telemetry`: access-log formats parsed (an unknown `%FIELD%` is an error
//! naming it), bounds checked, Istio's defaults filled in. Tracing is compiled by
//! [`super::tracing`].

use super::{Compiler, Site};
use crate::access_log::{json_format, text_format};
use crate::locate::FieldPath;
use crate::resources::{AccessLogEncoding, ProxyConfig};
use crate::snapshot::{AccessLog, LogWhen, PerDirection, Telemetry, DEFAULT_ACCESS_LOG_BUFFER};

/// The smallest per-worker access-log buffer: one long line must fit.
const MIN_ACCESS_LOG_BUFFER: usize = 4 * 1024;

impl Compiler {
    pub(super) fn telemetry(&mut self, pc: Option<&ProxyConfig>) -> Telemetry {
        let mut t = Telemetry::default();
        let Some(pc) = pc else { return t };
        let Some(spec) = &pc.spec.telemetry else { return t };
        let site: &Site<'_> = pc;
        let root = FieldPath::root().key("spec").key("telemetry");
        if let Some(on) = spec.reason_header {
            t.reason_header = on;
        }
        if let Some(m) = &spec.metrics {
            t.istio_metrics = PerDirection::both(m.istio.unwrap_or(true));
            if let Some(n) = m.max_series {
                match usize::try_from(n) {
                    Ok(n) if n >= 1 => t.max_series = n,
                    _ => self.error(
                        site,
                        &root.key("metrics").key("maxSeries"),
                        format!("maxSeries must be at least 1, got {n}"),
                    ),
                }
            }
        }
        if let Some(a) = &spec.access_log {
            let p = root.key("accessLog");
            let format = match a.encoding.unwrap_or_default() {
                AccessLogEncoding::Json => json_format(a.format.as_deref()),
                AccessLogEncoding::Text => text_format(a.format.as_deref()),
            };
            let format = match format {
                Ok(f) => Some(f),
                Err(e) => {
                    self.error(site, &p.key("format"), e.to_string());
                    None
                }
            };
            let mut buffer_bytes = DEFAULT_ACCESS_LOG_BUFFER;
            if let Some(n) = a.buffer_bytes {
                match usize::try_from(n) {
                    Ok(n) if n >= MIN_ACCESS_LOG_BUFFER => buffer_bytes = n,
                    _ => self.error(
                        site,
                        &p.key("bufferBytes"),
                        format!("bufferBytes must be at least {MIN_ACCESS_LOG_BUFFER}, got {n}"),
                    ),
                }
            }
            let path = a.path.clone().unwrap_or_else(|| "/dev/stdout".into());
            if path.is_empty() {
                self.error(
                    site,
                    &p.key("path"),
                    "path must not be empty (leave accessLog out to turn logs off)",
                );
            }
            if let Some(format) = format {
                t.access_log = Some(AccessLog {
                    path: path.into(),
                    format,
                    buffer_bytes,
                    filter: PerDirection::both(LogWhen::Always),
                });
            }
        }
        if let Some(tr) = &spec.tracing {
            t.tracing = self.tracing(site, &root.key("tracing"), tr);
        }
        t
    }
}
