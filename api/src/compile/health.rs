//! A DestinationRule's endpoint health settings: Istio's `outlierDetection` (passive: the data
//! plane ejects endpoints that keep failing) and ringmesh's `healthCheck` extension (active
//! probes). Both are checked here field by field, defaults applied, and carried in
//! [`super::destination_rule::PolicyParts`] like the policy's other parts.

use std::time::Duration;

use super::{Compiler, Site};
use crate::locate::FieldPath;
use crate::resources;
use crate::snapshot::{HealthCheck, HealthProbe, OutlierDetection};

/// Istio's defaults (Envoy's, which Istio leaves in place).
const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
const DEFAULT_CONSECUTIVE_LOCAL_ORIGIN: u32 = 5;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Envoy's `max_ejection_time` default; Istio does not expose the field.
const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
const DEFAULT_MAX_EJECTION_PERCENT: u8 = 10;

/// ringmesh's health-check defaults.
const DEFAULT_HC_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_HC_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;

impl Compiler {
    /// Istio `OutlierDetection`, with Istio's defaults for what is not written.
    pub(super) fn outlier_detection(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        od: &resources::OutlierDetection,
    ) -> Option<OutlierDetection> {
        let mut ok = true;
        let mut count = |c: &mut Self, field: &str, v: Option<i64>, default: u32| -> u32 {
            match v {
                None => default,
                Some(n) => u32::try_from(n).unwrap_or_else(|_| {
                    c.error(
                        site,
                        &p.key(field),
                        format!("{field} must be a number from 0 (disabled) to {}, got {n}", u32::MAX),
                    );
                    ok = false;
                    0
                }),
            }
        };
        let consecutive_5xx = count(
            self,
            "consecutive5xxErrors",
            od.consecutive_5xx_errors,
            DEFAULT_CONSECUTIVE_5XX,
        );
        let consecutive_gateway = count(self, "consecutiveGatewayErrors", od.consecutive_gateway_errors, 0);
        let consecutive_local_origin = count(
            self,
            "consecutiveLocalOriginFailures",
            od.consecutive_local_origin_failures,
            DEFAULT_CONSECUTIVE_LOCAL_ORIGIN,
        );
        let split_local_origin = od.split_external_local_origin_errors.unwrap_or(false);
        if od.consecutive_local_origin_failures.is_some() && !split_local_origin {
            self.warn(
                site,
                &p.key("consecutiveLocalOriginFailures"),
                "consecutiveLocalOriginFailures is ignored unless splitExternalLocalOriginErrors is true \
                 (local-origin failures then count as 5xx and gateway errors)",
            );
        }
        let interval = self.positive_duration(site, &p.key("interval"), od.interval.as_deref(), DEFAULT_INTERVAL);
        let base_ejection_time = self.positive_duration(
            site,
            &p.key("baseEjectionTime"),
            od.base_ejection_time.as_deref(),
            DEFAULT_BASE_EJECTION_TIME,
        );
        let max_ejection_percent = self.percent(site, &p.key("maxEjectionPercent"), od.max_ejection_percent);
        let min_health_percent = self.percent(site, &p.key("minHealthPercent"), od.min_health_percent);
        let (Some(interval), Some(base_ejection_time), Some(max_ejection_percent), Some(min_health_percent)) =
            (interval, base_ejection_time, max_ejection_percent, min_health_percent)
        else {
            return None;
        };
        if !ok {
            return None;
        }
        let local = split_local_origin && consecutive_local_origin > 0;
        if consecutive_5xx == 0 && consecutive_gateway == 0 && !local {
            self.warn(site, p, "every detector is disabled (0): no endpoint is ever ejected");
        }
        Some(OutlierDetection {
            consecutive_5xx,
            consecutive_gateway,
            consecutive_local_origin,
            split_local_origin,
            interval,
            base_ejection_time,
            max_ejection_time: MAX_EJECTION_TIME.max(base_ejection_time),
            // 0 is protobuf's "not set": Istio then leaves Envoy's default.
            max_ejection_percent: match max_ejection_percent {
                0 => DEFAULT_MAX_EJECTION_PERCENT,
                n => n,
            },
            min_health_percent,
        })
    }

    /// ringmesh's `healthCheck`: exactly one of `http` and `tcp`.
    pub(super) fn health_check(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        hc: &resources::HealthCheck,
    ) -> Option<HealthCheck> {
        let probe = match (&hc.http, &hc.tcp) {
            (Some(_), Some(_)) => {
                self.error(site, p, "healthCheck takes one of http and tcp, not both");
                None
            }
            (None, None) => {
                self.error(site, p, "healthCheck needs one of http and tcp");
                None
            }
            (None, Some(_)) => Some(HealthProbe::Tcp),
            (Some(http), None) => self.http_probe(site, &p.key("http"), http),
        };
        let interval = self.positive_duration(site, &p.key("interval"), hc.interval.as_deref(), DEFAULT_HC_INTERVAL);
        let timeout = self.positive_duration(site, &p.key("timeout"), hc.timeout.as_deref(), DEFAULT_HC_TIMEOUT);
        let unhealthy = self.threshold(
            site,
            &p.key("unhealthyThreshold"),
            hc.unhealthy_threshold,
            DEFAULT_UNHEALTHY_THRESHOLD,
        );
        let healthy = self.threshold(
            site,
            &p.key("healthyThreshold"),
            hc.healthy_threshold,
            DEFAULT_HEALTHY_THRESHOLD,
        );
        let (Some(probe), Some(interval), Some(timeout), Some(unhealthy_threshold), Some(healthy_threshold)) =
            (probe, interval, timeout, unhealthy, healthy)
        else {
            return None;
        };
        if timeout > interval {
            self.warn(
                site,
                &p.key("timeout"),
                "timeout is longer than interval: the next probe waits for the last one",
            );
        }
        Some(HealthCheck {
            probe,
            interval,
            timeout,
            unhealthy_threshold,
            healthy_threshold,
        })
    }

    fn http_probe(&mut self, site: &Site<'_>, p: &FieldPath, http: &resources::HttpHealthCheck) -> Option<HealthProbe> {
        let mut ok = true;
        let path = http.path.clone().unwrap_or_else(|| "/".to_owned());
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            self.error(
                site,
                &p.key("path"),
                format!("path must start with / and hold no spaces or control characters, got {path:?}"),
            );
            ok = false;
        }
        let host = http.host.clone().unwrap_or_default();
        if host.bytes().any(|b| b <= b' ' || b == 0x7f) {
            self.error(
                site,
                &p.key("host"),
                format!("host must hold no spaces or control characters, got {host:?}"),
            );
            ok = false;
        }
        let mut expected_statuses = Vec::with_capacity(http.expected_statuses.len());
        for (i, &s) in http.expected_statuses.iter().enumerate() {
            match u16::try_from(s) {
                Ok(s) if (100..=599).contains(&s) => expected_statuses.push(s),
                _ => {
                    self.error(
                        site,
                        &p.key("expectedStatuses").index(i),
                        format!("a status must be from 100 to 599, got {s}"),
                    );
                    ok = false;
                }
            }
        }
        if expected_statuses.is_empty() {
            expected_statuses.push(200);
        }
        ok.then_some(HealthProbe::Http {
            path,
            host,
            expected_statuses,
        })
    }

    /// A duration that must be more than zero; `default` when absent.
    fn positive_duration(
        &mut self,
        site: &Site<'_>,
        p: &FieldPath,
        text: Option<&str>,
        default: Duration,
    ) -> Option<Duration> {
        let Some(text) = text else {
            return Some(default);
        };
        let d = self.duration(site, p, text)?;
        if d < Duration::from_millis(1) {
            self.error(site, p, format!("must be at least 1ms, got {text:?}"));
            return None;
        }
        Some(d)
    }

    /// A percentage from 0 to 100; absent is 0.
    fn percent(&mut self, site: &Site<'_>, p: &FieldPath, v: Option<i64>) -> Option<u8> {
        match v {
            None => Some(0),
            Some(n) if (0..=100).contains(&n) => Some(n as u8),
            Some(n) => {
                self.error(site, p, format!("a percentage must be from 0 to 100, got {n}"));
                None
            }
        }
    }

    /// A count of probes in a row: at least 1; `default` when absent.
    fn threshold(&mut self, site: &Site<'_>, p: &FieldPath, v: Option<i64>, default: u32) -> Option<u32> {
        match v {
            None => Some(default),
            Some(n) => match u32::try_from(n) {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    self.error(site, p, format!("a threshold must be at least 1, got {n}"));
                    None
                }
            },
        }
    }
}
