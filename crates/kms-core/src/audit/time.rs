//! RFC 3339 times and relative ages, with a small proleptic-Gregorian date conversion (no
//! date library).

const MS_PER_SECOND: i64 = 1_000;
const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// `0000-01-01T00:00:00.000Z`, the earliest time [`format_time`] renders.
pub const MIN_TIME_MS: i64 = -62_167_219_200_000;
/// `9999-12-31T23:59:59.999Z`, the latest time [`format_time`] renders.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// RFC 3339 UTC with milliseconds and `Z`, e.g. `2026-11-23T10:00:00.123Z`. Times outside years
/// 0000–9999 are clamped to [`MIN_TIME_MS`]..=[`MAX_TIME_MS`].
pub fn format_time(ms: i64) -> String {
    let ms = ms.clamp(MIN_TIME_MS, MAX_TIME_MS);
    let (year, month, day) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    let in_day = ms.rem_euclid(MS_PER_DAY);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / MS_PER_HOUR,
        in_day / MS_PER_MINUTE % 60,
        in_day / MS_PER_SECOND % 60,
        in_day % MS_PER_SECOND
    )
}

/// Parses a time given on a command line, to Unix milliseconds: either RFC 3339
/// (`2026-11-23T10:00:00Z`, with an optional fraction of a second and a `Z` or `±HH:MM` offset;
/// digits past milliseconds are dropped) or an age — a whole number followed by `s`, `m`, `h` or
/// `d` (`90s`, `15m`, `2h`, `7d`) — meaning `now_ms` minus that much.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Some(age_ms) = parse_age(text)? {
        return now_ms
            .checked_sub(age_ms)
            .ok_or_else(|| format!("`{text}` reaches too far into the past"));
    }
    parse_rfc3339(text).map_err(|reason| {
        format!(
            "`{text}` is neither an RFC 3339 time such as 2026-11-23T10:00:00Z ({reason}) nor an \
             age such as 90s, 15m, 2h or 7d"
        )
    })
}

/// An age in milliseconds, `None` when `text` does not have the shape of one.
fn parse_age(text: &str) -> Result<Option<i64>, String> {
    let Some((digits, unit)) = text.split_at_checked(text.len().saturating_sub(1)) else {
        return Ok(None);
    };
    let unit_ms = match unit {
        "s" => MS_PER_SECOND,
        "m" => MS_PER_MINUTE,
        "h" => MS_PER_HOUR,
        "d" => MS_PER_DAY,
        _ => return Ok(None),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    digits
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .map(Some)
        .ok_or_else(|| format!("the age `{text}` is too large"))
}

/// Parses an RFC 3339 date-time (4-digit year) to Unix milliseconds.
pub(crate) fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let mut cursor = Cursor(text.as_bytes());
    let year = cursor.number(4, "year")?;
    cursor.literal(b"-")?;
    let month = cursor.number(2, "month")?;
    cursor.literal(b"-")?;
    let day = cursor.number(2, "day")?;
    cursor.literal(b"Tt ")?;
    let hour = cursor.number(2, "hour")?;
    cursor.literal(b":")?;
    let minute = cursor.number(2, "minute")?;
    cursor.literal(b":")?;
    let second = cursor.number(2, "second")?;
    let mut millis = 0;
    if cursor.peek() == Some(b'.') {
        cursor.literal(b".")?;
        let digits = cursor.take_digits();
        if digits.is_empty() {
            return Err("a digit must follow the decimal point".to_owned());
        }
        for place in 0..3 {
            millis = millis * 10 + digits.get(place).map_or(0, |d| i64::from(d - b'0'));
        }
    }
    let offset_minutes = match cursor.next() {
        Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            let hours = cursor.number(2, "offset hour")?;
            cursor.literal(b":")?;
            let minutes = cursor.number(2, "offset minute")?;
            if hours > 23 || minutes > 59 {
                return Err("the offset is out of range".to_owned());
            }
            let offset = hours * 60 + minutes;
            if sign == b'-' { -offset } else { offset }
        }
        _ => return Err("a `Z` or `±HH:MM` offset must follow the time".to_owned()),
    };
    if !cursor.0.is_empty() {
        return Err("unexpected text after the offset".to_owned());
    }
    if !(1..=12).contains(&month) {
        return Err("the month is out of range".to_owned());
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("the day is out of range".to_owned());
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err("the time of day is out of range".to_owned());
    }
    Ok(days_from_civil(year, month, day) * MS_PER_DAY
        + hour * MS_PER_HOUR
        + (minute - offset_minutes) * MS_PER_MINUTE
        + second * MS_PER_SECOND
        + millis)
}

/// The rest of the text being parsed.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    /// Exactly `len` ASCII digits.
    fn number(&mut self, len: usize, what: &str) -> Result<i64, String> {
        match self.0.split_at_checked(len) {
            Some((digits, rest)) if digits.iter().all(u8::is_ascii_digit) => {
                self.0 = rest;
                Ok(digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
            }
            _ => Err(format!("the {what} must be {len} digits")),
        }
    }

    /// One byte out of `allowed`.
    fn literal(&mut self, allowed: &[u8]) -> Result<(), String> {
        match self.next() {
            Some(b) if allowed.contains(&b) => Ok(()),
            _ => Err(format!(
                "expected `{}`",
                allowed.first().map_or('?', |&b| char::from(b))
            )),
        }
    }

    fn take_digits(&mut self) -> &[u8] {
        let len = self.0.iter().take_while(|b| b.is_ascii_digit()).count();
        let (digits, rest) = self.0.split_at(len);
        self.0 = rest;
        digits
    }
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic-Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day counted from 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_428_000_000; // 2026-11-23T10:00:00Z

    #[test]
    fn audit_format_time_known_answers() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_time(NOW + 123), "2026-11-23T10:00:00.123Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_time(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(format_time(1_709_251_200_000), "2024-03-01T00:00:00.000Z");
        assert_eq!(format_time(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        assert_eq!(format_time(MIN_TIME_MS), "0000-01-01T00:00:00.000Z");
        assert_eq!(format_time(MAX_TIME_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_time(i64::MIN), "0000-01-01T00:00:00.000Z");
        assert_eq!(format_time(i64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn audit_parse_time_known_answers() {
        let cases = [
            ("1970-01-01T00:00:00Z", 0),
            ("1969-12-31T23:59:59.999Z", -1),
            ("2026-11-23T10:00:00Z", NOW),
            ("2026-11-23T10:00:00.1Z", NOW + 100),
            ("2026-11-23T10:00:00.123456789Z", NOW + 123),
            ("2026-11-23T11:00:00+01:00", NOW),
            ("2026-11-23T04:30:00-05:30", NOW),
            ("2026-11-23t10:00:00z", NOW),
            ("2026-11-23 10:00:00Z", NOW),
            ("2000-02-29T00:00:00Z", 951_782_400_000),
            ("2024-02-29T23:59:59.999Z", 1_709_251_199_999),
            ("0000-01-01T00:00:00Z", MIN_TIME_MS),
            ("9999-12-31T23:59:59.999Z", MAX_TIME_MS),
            ("90s", NOW - 90_000),
            ("15m", NOW - 900_000),
            ("2h", NOW - 7_200_000),
            ("7d", NOW - 604_800_000),
            (" 0s ", NOW),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_time(text, NOW), Ok(expected), "{text}");
        }
    }

    #[test]
    fn audit_parse_time_rejects_bad_input() {
        for text in [
            "",
            "s",
            "-5m",
            "5w",
            "1.5h",
            "99999999999999999999d",
            "2026-11-23",
            "2026-11-23T10:00:00",
            "2026-11-23T10:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T10:60:00Z",
            "2026-11-23T10:00:60Z",
            "2026-11-23T10:00:00.Z",
            "2026-11-23T10:00:00+1:00",
            "2026-11-23T10:00:00+24:00",
            "2026-11-23T10:00:00Zjunk",
            "+2026-11-23T10:00:00Z",
        ] {
            assert!(parse_time(text, NOW).is_err(), "{text}");
        }
        assert!(parse_time("1d", i64::MIN).is_err());
    }

    /// Times and the exact text [`format_time`] gives them: these strings are inside signed
    /// audit lines, so a change of one byte breaks every log written before it.
    #[test]
    fn audit_format_time_is_pinned() {
        for (ms, text) in [
            (-62_135_596_800_000, "0001-01-01T00:00:00.000Z"),
            (-12_219_292_800_000, "1582-10-15T00:00:00.000Z"),
            (-2_208_988_800_001, "1899-12-31T23:59:59.999Z"),
            (-2_203_891_200_001, "1900-02-28T23:59:59.999Z"),
            (-2_203_891_200_000, "1900-03-01T00:00:00.000Z"),
            (-86_399_999, "1969-12-31T00:00:00.001Z"),
            (1, "1970-01-01T00:00:00.001Z"),
            (1_000, "1970-01-01T00:00:01.000Z"),
            (946_684_799_999, "1999-12-31T23:59:59.999Z"),
            (946_684_800_000, "2000-01-01T00:00:00.000Z"),
            (951_827_696_789, "2000-02-29T12:34:56.789Z"),
            (951_868_800_000, "2000-03-01T00:00:00.000Z"),
            (978_307_199_999, "2000-12-31T23:59:59.999Z"),
            (978_307_200_000, "2001-01-01T00:00:00.000Z"),
            (2_147_483_647_000, "2038-01-19T03:14:07.000Z"),
            (2_147_483_648_000, "2038-01-19T03:14:08.000Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (13_574_563_200_000, "2400-02-29T00:00:00.000Z"),
            (1_795_428_000_010, "2026-11-23T10:00:00.010Z"),
            (1_795_428_000_100, "2026-11-23T10:00:00.100Z"),
            (1_798_761_599_999, "2026-12-31T23:59:59.999Z"),
            (253_402_214_400_000, "9999-12-31T00:00:00.000Z"),
            (MIN_TIME_MS - 1, "0000-01-01T00:00:00.000Z"),
            (MAX_TIME_MS + 1, "9999-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(format_time(ms), text, "{ms}");
        }
    }

    /// The SHA-256 of the text of 200,000 times spread over the whole range and of every
    /// millisecond edge of a day in four centuries, pinned when the conversion was written by
    /// hand (and computed again, to the same digest, with Python's `datetime`): whatever does
    /// the calendar must give the same bytes.
    #[test]
    fn audit_format_time_digest_is_pinned() {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        let span = u64::try_from(MAX_TIME_MS - MIN_TIME_MS + 1).unwrap_or(u64::MAX);
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            // SplitMix64, for times spread over years 0000–9999.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let ms = MIN_TIME_MS + i64::try_from(z % span).unwrap_or(0);
            digest.update(format_time(ms).as_bytes());
            digest.update(b"\n");
        }
        let day = 86_400_000;
        let first = -2_208_988_800_000 / day; // 1900-01-01
        for d in first..first + 146_097 {
            for ms in [d * day - 1, d * day, d * day + 45_296_789] {
                digest.update(format_time(ms).as_bytes());
                digest.update(b"\n");
            }
        }
        assert_eq!(
            hex::encode(digest.finalize()),
            "8a94da1e857095c339e44de56b5649c776baffcea521593e003f4f4352a1710e"
        );
    }

    #[test]
    fn audit_parse_time_edges_are_pinned() {
        let hour = 3_600_000;
        let cases = [
            ("1969-12-31T23:59:59.9999Z", -1),
            ("1969-12-31T23:59:59.0005Z", -1_000),
            ("1970-01-01T00:00:00.0000000001Z", 0),
            ("1970-01-01T00:00:00.123456789123Z", 123),
            ("1970-01-01T00:00:00.5z", 500),
            ("0000-01-01T00:00:00+01:00", MIN_TIME_MS - hour),
            ("9999-12-31T23:59:59.999-01:00", MAX_TIME_MS + hour),
            ("2026-11-23T10:00:00-00:00", NOW),
            ("2026-11-23T23:59:00+23:59", NOW - 10 * hour),
            ("2026-11-23T00:00:00-23:59", NOW + 14 * hour - 60_000),
            ("2016-12-31T23:59:59.999Z", 1_483_228_799_999),
            ("2100-02-28T23:59:59Z", 4_107_542_399_000),
            ("2400-02-29T00:00:00Z", 13_574_563_200_000),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_rfc3339(text), Ok(expected), "{text}");
        }
        for text in [
            "2016-12-31T23:59:60Z",
            "2016-12-31T23:59:60.5Z",
            "2026-11-23X10:00:00Z",
            "2026-11-23_10:00:00Z",
            "2026-11-23\u{e9}10:00:00Z",
            "2026-11-23T10:00:00+00:60",
            "2026-11-23T10:00:00+0100",
            "2026-11-23T10:00:00 Z",
            "2026-11-23T10:00:00.5",
            "2026-11-23T10:00:00Z ",
            " 2026-11-23T10:00:00Z",
            "10000-01-01T00:00:00Z",
            "2026-1-01T00:00:00Z",
            "2026-01-1T00:00:00Z",
            "2026-01-01T0:00:00Z",
            "2100-02-29T00:00:00Z",
            "2026-06-31T00:00:00Z",
            "2026-11-23T10:00:00.-1Z",
            "2026-11-23T10:00:00,5Z",
        ] {
            assert!(parse_rfc3339(text).is_err(), "{text}");
        }
    }

    #[test]
    fn audit_time_round_trips_every_day_of_four_centuries() {
        let start = days_from_civil(1900, 1, 1);
        for day in start..start + 146_097 {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
            assert!(d >= 1 && d <= days_in_month(y, m));
            let ms = day * MS_PER_DAY + 45_296_789;
            assert_eq!(parse_rfc3339(&format_time(ms)), Ok(ms));
        }
    }
}
