//! RFC 3339 times and relative ages. The calendar is the `time` crate's; the text of a time
//! is spelled here, byte for byte, because it is inside signed audit lines (the tests pin it).

use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

const MS_PER_SECOND: i64 = 1_000;
const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;
const NS_PER_MS: i128 = 1_000_000;

/// `0000-01-01T00:00:00.000Z`, the earliest time [`format_time`] renders.
pub const MIN_TIME_MS: i64 = -62_167_219_200_000;
/// `9999-12-31T23:59:59.999Z`, the latest time [`format_time`] renders.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// RFC 3339 UTC with milliseconds and `Z`, e.g. `2026-11-23T10:00:00.123Z`. Times outside years
/// 0000–9999 are clamped to [`MIN_TIME_MS`]..=[`MAX_TIME_MS`].
pub fn format_time(ms: i64) -> String {
    // Within the clamp the addition cannot saturate: `time` holds years -9999..=9999. The
    // fields are written with `format!` rather than a format description, whose formatting
    // can fail, so this function cannot.
    let time = OffsetDateTime::UNIX_EPOCH
        .saturating_add(Duration::milliseconds(ms.clamp(MIN_TIME_MS, MAX_TIME_MS)));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.millisecond()
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

/// Parses an RFC 3339 date-time (4-digit year) to Unix milliseconds, dropping digits past
/// milliseconds.
///
/// `time`'s RFC 3339 parser is more lenient than this function in two places, refused here
/// as they always were: it takes any byte between the date and the time (we take `T`, `t` or
/// a space), and a leap second `:60`. Its words say why a text is refused.
pub(crate) fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let time = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| e.to_string())?;
    // Parsed, the text has its fixed layout: `YYYY-MM-DD` at 0..10, the separator at 10,
    // `hh:mm:ss` at 11..19.
    let bytes = text.as_bytes();
    if !matches!(bytes.get(10), Some(b'T' | b't' | b' ')) {
        return Err("expected `T` between the date and the time".to_owned());
    }
    if bytes.get(17..19) == Some(b"60") {
        return Err("the second is out of range (no leap seconds)".to_owned());
    }
    i64::try_from(time.unix_timestamp_nanos().div_euclid(NS_PER_MS))
        .map_err(|_| "the time is out of range".to_owned())
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
        let first = -2_208_988_800_000 / MS_PER_DAY; // 1900-01-01
        for day in first..first + 146_097 {
            for ms in [day * MS_PER_DAY, day * MS_PER_DAY + 45_296_789] {
                assert_eq!(parse_rfc3339(&format_time(ms)), Ok(ms));
            }
        }
    }
}
