//! CronJob schedules as upstream reads them: the robfig/cron v3 standard parser
//! (`cron.ParseStandard`), with its error messages, and the next fire time.
//!
//! Accepted: five fields (minute 0-59, hour 0-23, day of month 1-31, month 1-12 or
//! `jan`-`dec`, day of week 0-6 or `sun`-`sat`, names case-insensitive) of `*`, `?`,
//! numbers, ranges `a-b`, steps `/n` and comma lists; the descriptors `@yearly`,
//! `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly` and
//! `@every <Go duration>`; an optional `TZ=<zone> ` or `CRON_TZ=<zone> ` prefix, whose
//! zone name is kept in [`Schedule::time_zone`] for the caller to resolve (this crate
//! has no time zone database). Kubernetes validation rejects that prefix in
//! `spec.schedule`; that check belongs to the caller.

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use thiserror::Error;

use crate::quote::go_quote;

/// Why a schedule is invalid; the messages are robfig/cron's.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// The empty string.
    #[error("empty spec string")]
    Empty,
    /// Not five fields.
    #[error("expected exactly 5 fields, found {found}: [{fields}]")]
    FieldCount {
        /// How many fields there are.
        found: usize,
        /// The fields, space-separated.
        fields: String,
    },
    /// A field is malformed or out of range (e.g. `end of range (60) above maximum
    /// (59): 60`).
    #[error("{0}")]
    Field(String),
    /// An `@` word that is not a descriptor.
    #[error("unrecognized descriptor: {0}")]
    Descriptor(String),
    /// `@every` with an invalid Go duration.
    #[error("failed to parse duration {descriptor}: {message}")]
    Duration {
        /// The whole descriptor (`@every 5x`).
        descriptor: String,
        /// Go's `time.ParseDuration` message.
        message: String,
    },
    /// A `TZ=`/`CRON_TZ=` prefix not followed by a space and a schedule.
    #[error("provided bad location {0}: unknown time zone {0}")]
    Location(String),
}

/// A field's bits; bit 63 marks a field written as `*` or `?` (robfig's `starBit`).
const STAR: u64 = 1 << 63;

/// What a schedule fires on.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// Calendar fields (bit sets, with [`STAR`]).
    Spec {
        minute: u64,
        hour: u64,
        dom: u64,
        month: u64,
        dow: u64,
    },
    /// `@every`: a fixed delay in whole seconds (at least one).
    Every(i64),
}

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    kind: Kind,
    time_zone: Option<String>,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field's bounds and names.
struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
    name_base: u32,
}

const MINUTE: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
    name_base: 0,
};
const HOUR: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
    name_base: 0,
};
const DOM: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
    name_base: 0,
};
const MONTH: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &MONTHS,
    name_base: 1,
};
const DOW: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &DAYS,
    name_base: 0,
};

/// Go's `strconv.Atoi` of a non-negative number, with robfig's messages.
fn parse_int(s: &str) -> Result<u32, ScheduleError> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(ScheduleError::Field(format!(
            "failed to parse int from {s}: strconv.Atoi: parsing {}: invalid syntax",
            go_quote(s)
        )));
    }
    let n: i64 = s.parse().map_err(|_| {
        ScheduleError::Field(format!(
            "failed to parse int from {s}: strconv.Atoi: parsing {}: value out of range",
            go_quote(s)
        ))
    })?;
    if n < 0 {
        return Err(ScheduleError::Field(format!(
            "negative number ({n}) not allowed: {s}"
        )));
    }
    // Larger than any field's maximum: the range check reports it.
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

fn parse_int_or_name(s: &str, b: &Bounds) -> Result<u32, ScheduleError> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(u32::try_from(i).unwrap_or(0) + b.name_base);
    }
    parse_int(s)
}

/// One comma-separated part of a field (robfig's `getRange`).
fn parse_range(expr: &str, b: &Bounds) -> Result<u64, ScheduleError> {
    let field = |m: String| ScheduleError::Field(m);
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_and_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_and_high.len() == 1;
    let (start, mut end, mut extra) = if low_and_high[0] == "*" || low_and_high[0] == "?" {
        (b.min, b.max, STAR)
    } else {
        let start = parse_int_or_name(low_and_high[0], b)?;
        let end = match low_and_high.len() {
            1 => start,
            2 => parse_int_or_name(low_and_high[1], b)?,
            _ => return Err(field(format!("too many hyphens: {expr}"))),
        };
        (start, end, 0)
    };
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = parse_int(range_and_step[1])?;
            if single {
                end = b.max;
            }
            if step > 1 {
                extra = 0;
            }
            step
        }
        _ => return Err(field(format!("too many slashes: {expr}"))),
    };
    if start < b.min {
        return Err(field(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        )));
    }
    if end > b.max {
        return Err(field(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        )));
    }
    if start > end {
        return Err(field(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        )));
    }
    if step == 0 {
        return Err(field(format!(
            "step of range should be a positive number: {expr}"
        )));
    }
    let mut bits = extra;
    let mut v = start;
    while v <= end {
        bits |= 1 << v;
        v += step;
    }
    Ok(bits)
}

fn parse_field(field: &str, b: &Bounds) -> Result<u64, ScheduleError> {
    let mut bits = 0;
    for part in field.split(',') {
        bits |= parse_range(part, b)?;
    }
    Ok(bits)
}

/// Go's `time.ParseDuration`, in nanoseconds, with Go's messages.
pub fn parse_go_duration(s: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {}", go_quote(s));
    let mut rest = s;
    let mut negative = false;
    if let Some(r) = rest.strip_prefix('-') {
        negative = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let b = rest.as_bytes();
        if !(b[0] == b'.' || b[0].is_ascii_digit()) {
            return Err(invalid());
        }
        let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let n = r.bytes().take_while(|c| c.is_ascii_digit()).count();
            frac_part = &r[..n];
            rest = &r[n..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(rest.len(), |(i, _)| i);
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: u128 = match unit {
            "" => return Err(format!("time: missing unit in duration {}", go_quote(s))),
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            u => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    go_quote(u),
                    go_quote(s)
                ))
            }
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut v = int.checked_mul(scale).ok_or_else(invalid)?;
        // the fraction, truncated to whole nanoseconds as Go does
        let mut f_scale = scale;
        for c in frac_part.bytes() {
            f_scale /= 10;
            if f_scale == 0 {
                break;
            }
            v += u128::from(c - b'0') * f_scale;
        }
        total = total.checked_add(v).ok_or_else(invalid)?;
        if total > i64::MAX as u128 + u128::from(negative) {
            return Err(invalid());
        }
    }
    let total = i128::try_from(total).map_err(|_| invalid())?;
    i64::try_from(if negative { -total } else { total }).map_err(|_| invalid())
}

impl Schedule {
    /// Parses a schedule as robfig/cron v3's `ParseStandard`.
    pub fn parse(spec: &str) -> Result<Schedule, ScheduleError> {
        if spec.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let mut rest = spec;
        let mut time_zone = None;
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            let eq = spec.find('=').unwrap_or(0);
            let Some(sp) = spec.find(' ') else {
                return Err(ScheduleError::Location(spec[eq + 1..].to_string()));
            };
            let name = &spec[eq + 1..sp];
            if name.is_empty() {
                return Err(ScheduleError::Location(String::new()));
            }
            time_zone = Some(name.to_string());
            rest = spec[sp..].trim();
        }
        if rest.starts_with('@') {
            return parse_descriptor(rest).map(|kind| Schedule { kind, time_zone });
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(ScheduleError::FieldCount {
                found: fields.len(),
                fields: fields.join(" "),
            });
        }
        Ok(Schedule {
            kind: Kind::Spec {
                minute: parse_field(fields[0], &MINUTE)?,
                hour: parse_field(fields[1], &HOUR)?,
                dom: parse_field(fields[2], &DOM)?,
                month: parse_field(fields[3], &MONTH)?,
                dow: parse_field(fields[4], &DOW)?,
            },
            time_zone,
        })
    }

    /// The zone named by a `TZ=`/`CRON_TZ=` prefix, if the schedule has one.
    pub fn time_zone(&self) -> Option<&str> {
        self.time_zone.as_deref()
    }

    /// For `@every` schedules, the delay in whole seconds.
    pub fn every_seconds(&self) -> Option<i64> {
        match self.kind {
            Kind::Every(s) => Some(s),
            Kind::Spec { .. } => None,
        }
    }

    /// The first fire time strictly after `after`, in `tz`; `None` when there is none
    /// within five years (e.g. February 30th). As upstream, calendar schedules fire at
    /// second 0 of a matching minute, a wall-clock time skipped by a DST change does
    /// not fire and one repeated fires twice; `@every d` fires at `after` truncated to
    /// the second plus `d`.
    pub fn next(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        match self.kind {
            Kind::Every(secs) => Timestamp::from_second(after.as_second().checked_add(secs)?).ok(),
            Kind::Spec {
                minute,
                hour,
                dom,
                month,
                dow,
            } => next_spec(after, tz, [minute, hour, dom, month, dow]),
        }
    }
}

fn parse_descriptor(d: &str) -> Result<Kind, ScheduleError> {
    let all = |b: &Bounds| -> u64 { (b.min..=b.max).fold(0, |acc, v| acc | (1 << v)) };
    let spec = |minute: u64, hour: u64, dom: u64, month: u64, dow: u64| Kind::Spec {
        minute,
        hour,
        dom,
        month,
        dow,
    };
    let star = |b: &Bounds| all(b) | STAR;
    Ok(match d {
        "@yearly" | "@annually" => spec(1, 1, 1 << 1, 1 << 1, star(&DOW)),
        "@monthly" => spec(1, 1, 1 << 1, star(&MONTH), star(&DOW)),
        "@weekly" => spec(1, 1, star(&DOM), star(&MONTH), 1),
        "@daily" | "@midnight" => spec(1, 1, star(&DOM), star(&MONTH), star(&DOW)),
        "@hourly" => spec(1, star(&HOUR), star(&DOM), star(&MONTH), star(&DOW)),
        _ => {
            if let Some(dur) = d.strip_prefix("@every ") {
                let nanos = parse_go_duration(dur).map_err(|message| ScheduleError::Duration {
                    descriptor: d.to_string(),
                    message,
                })?;
                // robfig's Every: at least one second, truncated to whole seconds
                let secs = (nanos / 1_000_000_000).max(1);
                Kind::Every(secs)
            } else {
                return Err(ScheduleError::Descriptor(d.to_string()));
            }
        }
    })
}

fn day_matches(dom: u64, dow: u64, z: &Zoned) -> bool {
    let dom_ok = dom & (1 << z.day()) != 0;
    let dow_ok = dow & (1 << z.weekday().to_sunday_zero_offset()) != 0;
    if dom & STAR != 0 || dow & STAR != 0 {
        dom_ok && dow_ok
    } else {
        dom_ok || dow_ok
    }
}

fn next_spec(after: Timestamp, tz: &TimeZone, f: [u64; 5]) -> Option<Timestamp> {
    let [minute, hour, dom, month, dow] = f;
    let start = (after.as_second().div_euclid(60) + 1) * 60;
    let mut z = Timestamp::from_second(start).ok()?.to_zoned(tz.clone());
    let limit = z.year() + 5;
    'wrap: loop {
        if z.year() > limit {
            return None;
        }
        while month & (1 << z.month()) == 0 {
            let d = z
                .date()
                .first_of_month()
                .checked_add(jiff::Span::new().months(1))
                .ok()?;
            z = d.to_zoned(tz.clone()).ok()?;
            if z.month() == 1 {
                continue 'wrap;
            }
        }
        while !day_matches(dom, dow, &z) {
            z = z.date().tomorrow().ok()?.to_zoned(tz.clone()).ok()?;
            if z.day() == 1 {
                continue 'wrap;
            }
        }
        while hour & (1 << z.hour()) == 0 {
            let hour_start =
                z.timestamp().as_second() - i64::from(z.minute()) * 60 - i64::from(z.second());
            z = Timestamp::from_second(hour_start + 3600)
                .ok()?
                .to_zoned(tz.clone());
            if z.hour() == 0 {
                continue 'wrap;
            }
        }
        while minute & (1 << z.minute()) == 0 {
            z = Timestamp::from_second(z.timestamp().as_second() + 60)
                .ok()?
                .to_zoned(tz.clone());
            if z.minute() == 0 {
                continue 'wrap;
            }
        }
        return Some(z.timestamp());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(spec: &str, after: &str, tz: &str) -> Option<String> {
        let tz = TimeZone::get(tz).unwrap();
        Schedule::parse(spec)
            .unwrap()
            .next(utc(after), &tz)
            .map(|t| t.to_string())
    }

    fn err(spec: &str) -> String {
        Schedule::parse(spec).unwrap_err().to_string()
    }

    #[test]
    fn accepts_the_standard_syntax() {
        for ok in [
            "* * * * *",
            "*/15 9-17 * JAN-mar mon,wed,FRI",
            "0 0 ? * ?",
            "5/20 * * * *",
            "0-59/5 * * * *",
            "0 0 1,15 * *",
            "*-5 * * * *",
            "0 0 * * 0-6",
            "  0   0  *  *  * ",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
            "@every 5m",
            "@every 1h30m",
            "@every 1.5s",
            "@every 0",
            "TZ=UTC * * * * *",
            "CRON_TZ=Europe/Paris 0 9 * * *",
            "CRON_TZ=UTC @daily",
        ] {
            assert!(
                Schedule::parse(ok).is_ok(),
                "{ok:?}: {:?}",
                Schedule::parse(ok)
            );
        }
        assert_eq!(Schedule::parse("@hourly"), Schedule::parse("0 * * * *"));
        assert_eq!(Schedule::parse("@weekly"), Schedule::parse("0 0 * * sun"));
        assert_eq!(Schedule::parse("@daily"), Schedule::parse("0 0 * * *"));
        assert_eq!(
            Schedule::parse("CRON_TZ=Europe/Paris 0 9 * * *")
                .unwrap()
                .time_zone(),
            Some("Europe/Paris")
        );
        assert_eq!(
            Schedule::parse("@every 5m").unwrap().every_seconds(),
            Some(300)
        );
        assert_eq!(
            Schedule::parse("@every 10ms").unwrap().every_seconds(),
            Some(1)
        );
    }

    #[test]
    fn rejects_with_robfigs_messages() {
        assert_eq!(err(""), "empty spec string");
        assert_eq!(
            err("* * * *"),
            "expected exactly 5 fields, found 4: [* * * *]"
        );
        assert_eq!(
            err("0 0 * * * *"),
            "expected exactly 5 fields, found 6: [0 0 * * * *]"
        );
        assert_eq!(
            err("60 * * * *"),
            "end of range (60) above maximum (59): 60"
        );
        assert_eq!(
            err("* * 0 * *"),
            "beginning of range (0) below minimum (1): 0"
        );
        assert_eq!(err("* * * * 7"), "end of range (7) above maximum (6): 7");
        assert_eq!(
            err("5-2 * * * *"),
            "beginning of range (5) beyond end of range (2): 5-2"
        );
        assert_eq!(
            err("*/0 * * * *"),
            "step of range should be a positive number: */0"
        );
        assert_eq!(err("1-2-3 * * * *"), "too many hyphens: 1-2-3");
        assert_eq!(err("*/2/3 * * * *"), "too many slashes: */2/3");
        assert_eq!(
            err("x * * * *"),
            "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax"
        );
        assert_eq!(
            err("* * * foo *"),
            "failed to parse int from foo: strconv.Atoi: parsing \"foo\": invalid syntax"
        );
        assert_eq!(err("@often"), "unrecognized descriptor: @often");
        assert_eq!(
            err("@every 5x"),
            "failed to parse duration @every 5x: time: unknown unit \"x\" in duration \"5x\""
        );
        assert_eq!(
            err("@every 5"),
            "failed to parse duration @every 5: time: missing unit in duration \"5\""
        );
        assert_eq!(
            err("@every "),
            "failed to parse duration @every : time: invalid duration \"\""
        );
        assert!(Schedule::parse("TZ=UTC").is_err());
        // robfig does not trim: a leading space makes the descriptor a field
        assert!(Schedule::parse(" @hourly").is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5m"), Ok(300_000_000_000));
        assert_eq!(parse_go_duration("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_go_duration(".5h"), Ok(1_800_000_000_000));
        assert_eq!(parse_go_duration("-2us"), Ok(-2_000));
        assert_eq!(parse_go_duration("3µs"), Ok(3_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        for bad in ["", "1", ".s", "1x", "5 m", "-", "1h-5m", "9999999999h"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn next_times_in_utc() {
        assert_eq!(
            next("*/1 * * * *", "2024-01-01T10:00:30Z", "UTC").as_deref(),
            Some("2024-01-01T10:01:00Z")
        );
        assert_eq!(
            next("5/20 * * * *", "2024-01-01T10:26:00Z", "UTC").as_deref(),
            Some("2024-01-01T10:45:00Z")
        );
        assert_eq!(
            next("@daily", "2024-01-31T23:59:00Z", "UTC").as_deref(),
            Some("2024-02-01T00:00:00Z")
        );
        assert_eq!(
            next("@yearly", "2024-03-01T00:00:00Z", "UTC").as_deref(),
            Some("2025-01-01T00:00:00Z")
        );
        assert_eq!(
            next("0 0 29 2 *", "2024-03-01T00:00:00Z", "UTC").as_deref(),
            Some("2028-02-29T00:00:00Z")
        );
        assert_eq!(
            Schedule::parse("0 0 30 2 *")
                .unwrap()
                .next(utc("2024-03-01T00:00:00Z"), &TimeZone::UTC),
            None
        );
        // both day fields restricted: either matches (2024-01-01 is a Monday)
        assert_eq!(
            next("0 0 15 * FRI", "2024-01-01T00:00:00Z", "UTC").as_deref(),
            Some("2024-01-05T00:00:00Z")
        );
        // `?` is a star: the weekday alone decides
        assert_eq!(
            next("0 12 ? * 3", "2024-01-01T00:00:00Z", "UTC").as_deref(),
            Some("2024-01-03T12:00:00Z")
        );
        // a stepped star is not a star: either day field matches
        assert_eq!(
            next("0 0 */10 * MON", "2024-01-02T00:00:00Z", "UTC").as_deref(),
            Some("2024-01-08T00:00:00Z")
        );
    }

    #[test]
    fn every_fires_after_a_fixed_delay() {
        assert_eq!(
            next("@every 5m", "2024-01-01T10:00:30.250Z", "UTC").as_deref(),
            Some("2024-01-01T10:05:30Z")
        );
        assert_eq!(
            next("@every 1h30m", "2024-01-01T23:00:00Z", "Europe/Paris").as_deref(),
            Some("2024-01-02T00:30:00Z")
        );
    }

    #[test]
    fn next_times_across_dst() {
        assert_eq!(
            next("0 9 * * *", "2024-07-10T12:00:00Z", "Europe/Paris").as_deref(),
            Some("2024-07-11T07:00:00Z")
        );
        // 02:30 does not exist in New York on 2024-03-10
        assert_eq!(
            next("30 2 * * *", "2024-03-09T12:00:00Z", "America/New_York").as_deref(),
            Some("2024-03-11T06:30:00Z")
        );
        // 01:30 happens twice on 2024-11-03
        assert_eq!(
            next("30 1 * * *", "2024-11-03T05:30:00Z", "America/New_York").as_deref(),
            Some("2024-11-03T06:30:00Z")
        );
    }
}
