//! How numbers, sizes, durations and times print in the report, and what an absent value
//! prints as. Imports nothing from the rest of the report.

/// What a value that no stage produced prints as.
pub const MISSING: &str = "missing";

/// What a cell prints as where the quantity does not apply (rows of a checkpoint, a score
/// a source did not publish).
pub const NOT_APPLICABLE: &str = "–";

/// What a task that the finetune stage did not run prints as.
pub const NOT_RUN: &str = "not run";

/// Characters of a blake3 hash shown in tables.
pub const SHORT_HASH: usize = 12;

/// A score as a percentage: values within ±1 are fractions and are scaled by 100, larger
/// values are taken to be percentages already (SQuAD's official script prints 0..100).
pub fn as_percent(v: f64) -> f64 {
    if v.abs() <= 1.0 {
        v * 100.0
    } else {
        v
    }
}

/// `v` with `decimals` places, or [`MISSING`].
pub fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        Some(v) => v.to_string(),
        None => MISSING.into(),
    }
}

/// Row counts; 0 means rows do not apply (checkpoints, tokenizers) and prints as `–`.
pub fn fmt_rows(rows: u64) -> String {
    if rows == 0 {
        NOT_APPLICABLE.into()
    } else {
        rows.to_string()
    }
}

/// The first [`SHORT_HASH`] characters of a hash.
pub fn short(hash: &str) -> String {
    hash.chars().take(SHORT_HASH).collect()
}

/// `512 B`, `1.5 KiB`, `3.2 MiB`, `1.1 GiB`.
pub fn fmt_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `850 ms`, `12.3 s`, `4m 05s`, `2h 03m`.
pub fn fmt_duration(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else if seconds < 3600.0 {
        let s = seconds.round() as u64;
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        let m = (seconds / 60.0).round() as u64;
        format!("{}h {:02}m", m / 60, m % 60)
    }
}

/// `850`, `12.3k`, `1.25M` per second.
pub fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Unix seconds as `2026-11-27 22:45:33`.
pub fn fmt_time(unix: f64) -> String {
    if !unix.is_finite() || unix <= 0.0 {
        return MISSING.into();
    }
    let secs = unix.floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_bytes_and_durations() {
        assert_eq!(fmt_time(0.0), MISSING);
        assert_eq!(fmt_time(1_795_819_533.7), "2026-11-27 22:45:33");
        assert_eq!(fmt_time(951_782_400.0), "2000-02-29 00:00:00");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(fmt_duration(0.25), "250 ms");
        assert_eq!(fmt_duration(245.0), "4m 05s");
        assert_eq!(fmt_duration(7380.0), "2h 03m");
    }

    #[test]
    fn scores_print_as_percentages() {
        assert_eq!(as_percent(0.853), 85.3);
        assert_eq!(as_percent(88.5), 88.5);
        assert_eq!(as_percent(-0.02), -2.0);
    }
}
