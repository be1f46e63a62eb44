//! How metrics-server writes figures: CPU as a decimal quantity of nano-cores
//! (`12345n`, `250m`, `2`), memory as a binary quantity of bytes (`1234Ki`, `1Gi`, or
//! plain bytes when not a multiple of 1024), windows as Go `time.Duration` strings
//! (`15s`, `1m0.5s`), timestamps as RFC 3339 seconds.

use rk3s_core::quantity::{Format, Quantity};

/// CPU usage in nano-cores as metrics-server prints it (a quantity scaled 10^-9,
/// canonical form: `12345n`, `250m`, `1500m`, `2`).
pub fn cpu_quantity(nano_cores: u64) -> String {
    match Quantity::parse(&format!("{nano_cores}n")) {
        Ok(q) => q.to_string(),
        Err(_) => format!("{nano_cores}n"),
    }
}

/// Memory in bytes as metrics-server prints it (binary SI: `1Ki`, `1536Mi`; values
/// that are not a multiple of 1024 print as plain decimal bytes, as upstream's
/// canonical form).
pub fn memory_quantity(bytes: u64) -> String {
    let n = i64::try_from(bytes).unwrap_or(i64::MAX);
    Quantity::from_int(n, Format::BinarySi).to_string()
}

/// A duration in nanoseconds as Go's `time.Duration.String()` (what `metav1.Duration`
/// serializes to): `0s`, `1.5µs`, `15s`, `20.042s`, `1m0.5s`, `1h2m3s`.
pub fn go_duration(nanos: u64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    // Fractions print without trailing zeros.
    let frac = |whole: u64, rem: u64, digits: u32| -> String {
        if rem == 0 {
            return whole.to_string();
        }
        let s = format!("{rem:0width$}", width = digits as usize);
        format!("{whole}.{}", s.trim_end_matches('0'))
    };
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", frac(nanos / 1_000, nanos % 1_000, 3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", frac(nanos / 1_000_000, nanos % 1_000_000, 6));
    }
    let total_secs = nanos / 1_000_000_000;
    let sub = nanos % 1_000_000_000;
    let h = total_secs / 3600;
    let m = (total_secs % 3600) / 60;
    let s = total_secs % 60;
    let secs = format!("{}s", frac(s, sub, 9));
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

/// A timestamp as Kubernetes writes `metav1.Time` (RFC 3339, whole seconds, UTC).
pub fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_canonical_nano_cores() {
        assert_eq!(cpu_quantity(12345), "12345n");
        assert_eq!(cpu_quantity(250_000_000), "250m");
        assert_eq!(cpu_quantity(1_500_000_000), "1500m");
        assert_eq!(cpu_quantity(2_000_000_000), "2");
        assert_eq!(cpu_quantity(1_000), "1u");
        assert_eq!(cpu_quantity(0), "0");
        assert_eq!(cpu_quantity(123_456_789), "123456789n");
    }

    #[test]
    fn memory_is_binary_bytes() {
        assert_eq!(memory_quantity(1024), "1Ki");
        assert_eq!(memory_quantity(1_263_616), "1234Ki");
        assert_eq!(memory_quantity(3 << 30), "3Gi");
        assert_eq!(memory_quantity(1536 << 20), "1536Mi");
        // Not a multiple of 1024: decimal, as upstream's canonical form.
        assert_eq!(memory_quantity(1_234_567), "1234567");
        assert_eq!(memory_quantity(512), "512");
        assert_eq!(memory_quantity(0), "0");
    }

    #[test]
    fn windows_print_as_go_durations() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(15_000_000_000), "15s");
        assert_eq!(go_duration(20_042_000_000), "20.042s");
        assert_eq!(go_duration(60_500_000_000), "1m0.5s");
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
        assert_eq!(go_duration(1_500), "1.5µs");
        assert_eq!(go_duration(2_500_000), "2.5ms");
        assert_eq!(go_duration(999), "999ns");
    }

    #[test]
    fn timestamps_are_rfc3339_seconds() {
        let t = jiff::Timestamp::from_millisecond(1_700_000_000_123).expect("ts");
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
    }
}
