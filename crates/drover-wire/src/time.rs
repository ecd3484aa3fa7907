//! UTC times as drover writes and reads them: on log lines, in tables, after `--since`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The civil date (year, month, day) of a day counted from 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m as u32, d as u32)
}

/// Days from 1970-01-01 to a civil date: the inverse of `civil`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date and time of day of `secs` since the epoch, `sep` between them:
/// `2026-12-02{sep}17:50:01`.
fn date_time(secs: u64, sep: char) -> String {
    let (y, m, d) = civil((secs / 86400) as i64);
    let rem = secs % 86400;
    format!(
        "{y:04}-{m:02}-{d:02}{sep}{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `2026-12-02 17:50:01Z`: a time in a table.
pub fn table(secs: u64) -> String {
    format!("{}Z", date_time(secs, ' '))
}

/// `2026-12-02T17:50:01.123Z` (RFC 3339, always 24 bytes): the stamp on a log line.
pub fn stamp(ms: u64) -> String {
    format!("{}.{:03}Z", date_time(ms / 1000, 'T'), ms % 1000)
}

/// The length of a `stamp`.
pub const STAMP_LEN: usize = 24;

/// Reads a UTC time written as RFC 3339 (`2026-12-02T17:50:01Z`, with `.123` or without,
/// `T` or a space between date and time, seconds and `Z` optional) or as a date (`2026-12-02`, its midnight): ms
/// since the epoch.
pub fn parse_utc(s: &str) -> Option<u64> {
    let s = s.trim();
    let num = |t: &str| -> Option<u32> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let (date, time) = match s.find(['T', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut dp = date.split('-');
    let (y, m, d) = (num(dp.next()?)?, num(dp.next()?)?, num(dp.next()?)?);
    if dp.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut ms = 0u64;
    if let Some(t) = time {
        // UTC always: `Z`, `+00:00` or nothing.
        let t = t
            .strip_suffix('Z')
            .or_else(|| t.strip_suffix("+00:00"))
            .unwrap_or(t);
        let (hms, frac) = match t.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (t, None),
        };
        let mut tp = hms.split(':');
        let (h, mi) = (num(tp.next()?)?, num(tp.next()?)?);
        let sec = match tp.next() {
            Some(x) => num(x)?,
            None => 0,
        };
        if tp.next().is_some() || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        ms = (u64::from(h) * 3600 + u64::from(mi) * 60 + u64::from(sec)) * 1000;
        if let Some(f) = frac {
            let digits = num(f)?;
            ms += match f.len() {
                1 => u64::from(digits) * 100,
                2 => u64::from(digits) * 10,
                3 => u64::from(digits),
                _ => return None,
            };
        }
    }
    let days = days_from_civil(i64::from(y), m, d);
    u64::try_from(days).ok().map(|d| d * 86_400_000 + ms)
}

/// `--since` as a user writes it: a time (`parse_utc`) or how long ago (`10m`, `2h`,
/// `90s`, `1d`): ms since the epoch, given the time now.
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64, String> {
    if let Some(at) = parse_utc(s) {
        return Ok(at);
    }
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is neither a time nor a duration"))?;
    let per = match unit {
        "ms" => Duration::from_millis(1),
        "s" | "" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86_400),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h, d)")),
    };
    Ok(now_ms.saturating_sub(per.as_millis() as u64 * n))
}

/// The stamp at the start of a log line and the rest of it; `None` for a line written
/// without one.
pub fn split_stamp(line: &str) -> (Option<u64>, &str) {
    if line.len() > STAMP_LEN
        && line.as_bytes()[STAMP_LEN] == b' '
        && line.as_bytes()[10] == b'T'
        && let Some(ms) = parse_utc(&line[..STAMP_LEN])
    {
        return (Some(ms), &line[STAMP_LEN + 1..]);
    }
    (None, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_read_back_as_the_time_they_were_written_at() {
        for ms in [0, 1_764_697_801_123, 951_782_400_000, 4_102_444_799_999] {
            let s = stamp(ms);
            assert_eq!(s.len(), STAMP_LEN, "{s}");
            assert_eq!(parse_utc(&s), Some(ms), "{s}");
            let line = format!("{s} hello world");
            assert_eq!(split_stamp(&line), (Some(ms), "hello world"));
        }
        assert_eq!(stamp(1_764_697_801_123), "2025-12-02T17:50:01.123Z");
        assert_eq!(table(1_764_697_801), "2025-12-02 17:50:01Z");
    }

    #[test]
    fn since_takes_a_time_a_date_or_how_long_ago() {
        let now = 1_764_697_801_123;
        assert_eq!(parse_since("10m", now), Ok(now - 600_000));
        assert_eq!(parse_since("90s", now), Ok(now - 90_000));
        assert_eq!(parse_since("2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_since("2025-12-02", now), Ok(1_764_633_600_000));
        assert_eq!(
            parse_since("2025-12-02T17:50:01Z", now),
            Ok(1_764_697_801_000)
        );
        assert_eq!(parse_since("2025-12-02 17:50", now), Ok(1_764_697_800_000));
        assert!(parse_since("yesterday", now).is_err());
        assert!(
            parse_since("10y", now)
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_utc("2025-13-02").is_none());
    }

    #[test]
    fn a_line_without_a_stamp_is_kept_whole() {
        assert_eq!(split_stamp("plain line"), (None, "plain line"));
        assert_eq!(
            split_stamp("2025-12-02 17:50:01.123Z not ours"),
            (None, "2025-12-02 17:50:01.123Z not ours")
        );
        assert_eq!(split_stamp(""), (None, ""));
    }
}
