//! The one duration parser for every timeout in every resource.
//!
//! Istio writes durations as Go/protobuf strings (`"1s"`, `"250ms"`, `"1.5s"`, `"1h30m"`), and
//! users carry that habit into ringmesh's own `ProxyConfig`. Parsing them in one place means a
//! timeout means the same thing wherever it is written, and garbage is an error naming the value
//! instead of a silent default.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing to parse.
    #[error("empty duration")]
    Empty,
    /// Durations here are lengths of time; a negative one has no meaning.
    #[error("duration {0:?} is negative")]
    Negative(String),
    /// A number without a unit (other than `0`).
    #[error("duration {0:?} has no unit; write e.g. \"1s\", \"250ms\", \"1m\" or \"1h\"")]
    MissingUnit(String),
    /// A unit that is not one of ns, us, µs, ms, s, m, h.
    #[error("duration {value:?} has unknown unit {unit:?}; use ns, us, ms, s, m or h")]
    UnknownUnit {
        /// The whole value.
        value: String,
        /// The unit found.
        unit: String,
    },
    /// Not a number followed by a unit.
    #[error("invalid duration {0:?}; write e.g. \"1s\", \"250ms\", \"1.5s\" or \"1h30m\"")]
    Invalid(String),
    /// Larger than this program can represent.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses a Go-style duration: one or more `<decimal><unit>` parts, e.g. `1s`, `250ms`,
/// `1.5s`, `1h30m`; a bare `0` is zero. Surrounding whitespace is ignored.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative(s.to_owned()));
    }
    let s_no_plus = s.strip_prefix('+').unwrap_or(s);
    if s_no_plus == "0" {
        return Ok(Duration::ZERO);
    }
    let bytes = s_no_plus.as_bytes();
    let mut total_nanos: u128 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number = &s_no_plus[start..i];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(DurationError::Invalid(s.to_owned()));
        }
        let unit_start = i;
        while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let unit = &s_no_plus[unit_start..i];
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(s.to_owned()));
        }
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(DurationError::UnknownUnit {
                    value: s.to_owned(),
                    unit: unit.to_owned(),
                })
            }
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| DurationError::Overflow(s.to_owned()))?
        };
        let mut part = whole
            .checked_mul(unit_nanos)
            .ok_or_else(|| DurationError::Overflow(s.to_owned()))?;
        // Fraction: digits beyond nanosecond precision are dropped, as Go does.
        let mut scale = unit_nanos;
        for d in frac.bytes().take(30) {
            scale /= 10;
            part += u128::from(d - b'0') * scale;
        }
        total_nanos = total_nanos
            .checked_add(part)
            .ok_or_else(|| DurationError::Overflow(s.to_owned()))?;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| DurationError::Overflow(s.to_owned()))?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC): how certificates' validity and renewal times are shown to a
/// person (`/certs`, logs, `ringmesh token create`), without a date crate for one formatter.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let mut out = String::with_capacity(20);
    write_rfc3339(t, false, &mut out);
    out
}

/// Writes `t` as `YYYY-MM-DDTHH:MM:SSZ`, or with milliseconds (`…:SS.mmmZ`, Envoy's
/// `%START_TIME%`) when `millis`.
pub fn write_rfc3339(t: std::time::SystemTime, millis: bool, out: &mut impl std::fmt::Write) {
    let (secs, ms) = match t.duration_since(std::time::SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_millis()),
        Err(e) => (-(e.duration().as_secs() as i64), 0),
    };
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if millis {
        let _ = write!(out, ".{ms:03}");
    }
    let _ = out.write_str("Z");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_forms() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn garbage_is_an_error_naming_the_value() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("10"), Err(DurationError::MissingUnit("10".into())));
        let e = parse_duration("5 seconds").expect_err("bad unit");
        assert!(e.to_string().contains("\"5 seconds\""), "{e}");
        assert!(matches!(parse_duration("1x"), Err(DurationError::UnknownUnit { .. })));
        assert!(matches!(parse_duration("abc"), Err(DurationError::Invalid(_))));
        assert!(matches!(parse_duration("1..5s"), Err(DurationError::Invalid(_))));
        assert!(matches!(parse_duration("-1s"), Err(DurationError::Negative(_))));
        assert!(matches!(
            parse_duration("99999999999999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }
}
