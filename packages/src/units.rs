//! Byte sizes (`500MiB`) and durations (`60s`) as people write them.

use std::time::Duration;

/// Why a size or duration could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{text}`: {reason}")]
pub struct ParseUnitError {
    what: &'static str,
    text: String,
    reason: String,
}

impl ParseUnitError {
    fn new(what: &'static str, text: &str, reason: impl Into<String>) -> Self {
        let text: String = text
            .chars()
            .take(40)
            .collect::<String>()
            .escape_debug()
            .to_string();
        ParseUnitError {
            what,
            text,
            reason: reason.into(),
        }
    }
}

const BYTE_UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("k", 1000),
    ("kb", 1000),
    ("kib", 1 << 10),
    ("m", 1000 * 1000),
    ("mb", 1000 * 1000),
    ("mib", 1 << 20),
    ("g", 1000 * 1000 * 1000),
    ("gb", 1000 * 1000 * 1000),
    ("gib", 1 << 30),
    ("t", 1000 * 1000 * 1000 * 1000),
    ("tb", 1000 * 1000 * 1000 * 1000),
    ("tib", 1 << 40),
];

/// Splits `"500 MiB"` into `("500", "MiB")`.
fn split_number(text: &str) -> (&str, &str) {
    let text = text.trim();
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    (&text[..end], text[end..].trim_start())
}

/// Reads a byte count: a plain number of bytes (`1048576`) or a whole number
/// with a unit (`500MiB`, `2 GiB`, `10MB`). Units are case-insensitive;
/// `KiB`/`MiB`/`GiB`/`TiB` are powers of 1024, `KB`/`MB`/`GB`/`TB` (and
/// `K`/`M`/`G`/`T`) powers of 1000.
pub fn parse_bytes(text: &str) -> Result<u64, ParseUnitError> {
    const WHAT: &str = "size";
    let (digits, unit) = split_number(text);
    if digits.is_empty() {
        return Err(ParseUnitError::new(
            WHAT,
            text,
            "expected a whole number such as 500MiB",
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| ParseUnitError::new(WHAT, text, "the number is too large"))?;
    let multiplier = if unit.is_empty() {
        1
    } else {
        let lower = unit.to_ascii_lowercase();
        BYTE_UNITS
            .iter()
            .find(|(name, _)| *name == lower)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                ParseUnitError::new(
                    WHAT,
                    text,
                    format!("unknown unit `{unit}` (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"),
                )
            })?
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| ParseUnitError::new(WHAT, text, "the size does not fit in 64 bits"))
}

/// Reads a duration: a whole number with a unit `ms`, `s`, `m` or `h`
/// (`500ms`, `60s`, `5m`, `1h`), or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ParseUnitError> {
    const WHAT: &str = "duration";
    let (digits, unit) = split_number(text);
    if digits.is_empty() {
        return Err(ParseUnitError::new(
            WHAT,
            text,
            "expected a whole number with a unit such as 60s",
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| ParseUnitError::new(WHAT, text, "the number is too large"))?;
    let duration = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" | "min" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        other => {
            return Err(ParseUnitError::new(
                WHAT,
                text,
                format!("unknown unit `{other}` (use ms, s, m or h)"),
            ));
        }
    };
    duration.ok_or_else(|| ParseUnitError::new(WHAT, text, "the duration is too long"))
}

/// Writes a duration the way [`parse_duration`] reads it, in the largest
/// unit that keeps it exact (`90s`, `5m`, `1500ms`).
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 || d.subsec_nanos() % 1_000_000 != 0 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s != 0 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s != 0 && s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Writes a byte count for people: `512 bytes`, `120 MiB`, `1.5 GiB`.
///
/// Fractions are rounded down to one decimal, so a size just under a limit
/// never prints as the limit itself.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: &[(&str, u64)] = &[
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if bytes >= *size {
            let tenths = u128::from(bytes) * 10 / u128::from(*size);
            return if tenths % 10 == 0 {
                format!("{} {name}", tenths / 10)
            } else {
                format!("{}.{} {name}", tenths / 10, tenths % 10)
            };
        }
    }
    if bytes == 1 {
        "1 byte".to_owned()
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_with_units() {
        assert_eq!(parse_bytes("500MiB"), Ok(500 << 20));
        assert_eq!(parse_bytes("500 MiB"), Ok(500 << 20));
        assert_eq!(parse_bytes("2gib"), Ok(2 << 30));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("7B"), Ok(7));
    }

    #[test]
    fn bytes_errors_say_what_is_wrong() {
        assert!(parse_bytes("lots")
            .unwrap_err()
            .to_string()
            .contains("whole number"));
        assert!(parse_bytes("5 parsecs")
            .unwrap_err()
            .to_string()
            .contains("unknown unit `parsecs`"));
        assert!(parse_bytes("1.5GiB")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert!(parse_bytes("99999999TiB")
            .unwrap_err()
            .to_string()
            .contains("64 bits"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("1d")
            .unwrap_err()
            .to_string()
            .contains("unknown unit `d`"));
        assert!(parse_duration("s").is_err());
        for d in ["90s", "5m", "2h", "1500ms", "0s"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
    }

    #[test]
    fn human_sizes_round_down() {
        assert_eq!(format_bytes(120 << 20), "120 MiB");
        assert_eq!(format_bytes((500 << 20) - 1), "499.9 MiB");
        assert_eq!(format_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(format_bytes(512), "512 bytes");
        assert_eq!(format_bytes(1), "1 byte");
    }
}
