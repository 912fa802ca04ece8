//! Redis's integer rules, for every place that reads a value or an argument as a number
//! (INCRBY on the owner, and the RESP front-end's arguments).

/// A byte string as a Redis integer: an optional `-`, decimal digits, no leading zeros, spaces
/// or `+`, no `-0`, within i64.
pub fn parse_decimal(b: &[u8]) -> Option<i64> {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    let ok = !digits.is_empty()
        && digits.len() <= 19
        && digits.iter().all(u8::is_ascii_digit)
        && (digits.len() == 1 || digits[0] != b'0')
        && b != b"-0";
    if !ok {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_decimal;

    #[test]
    fn integers_as_redis_reads_them() {
        assert_eq!(parse_decimal(b"12"), Some(12));
        assert_eq!(parse_decimal(b"-12"), Some(-12));
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_decimal(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b" 1",
            b"1 ",
            b"01",
            b"-01",
            b"-0",
            b"1.5",
            b"abc",
            b"9223372036854775808",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }
}
