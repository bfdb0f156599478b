//! Package versions: `1.2`, `1.2.3`, `2024.01.15`, `1.0.0-rc.1+build.7`.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest version string accepted, in bytes.
const MAX_VERSION_LEN: usize = 64;
/// Most dot-separated numbers in the release part (`1.2.3.4`).
const MAX_RELEASE_PARTS: usize = 4;

/// A package version, semver-like but more forgiving.
///
/// The form is `N[.N[.N[.N]]][-PRE][+BUILD]`: one to four unsigned numbers
/// (leading zeros allowed, so date versions such as `2024.01.15` work), an
/// optional pre-release of dot-separated identifiers (`rc.1`, `beta`) and
/// optional build metadata.
///
/// Ordering follows semver: release numbers compare numerically, with missing
/// trailing numbers counting as zero (`1.2` == `1.2.0`); a version with a
/// pre-release sorts before the same version without one (`1.0.0-rc.1` <
/// `1.0.0`); pre-release identifiers compare numerically when both are
/// numbers, as text otherwise, numbers before text, and a shorter list
/// before a longer one that extends it. Build metadata is ignored when
/// comparing. Equality is that ordering's equality, so `1.2 == 1.2.0` even
/// though they print differently ([`Display`](fmt::Display) prints the text
/// as written).
#[derive(Clone, Debug)]
pub struct Version {
    release: Vec<u64>,
    pre: Vec<PreIdent>,
    text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PreIdent {
    Num(u64),
    Text(String),
}

impl Ord for PreIdent {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (PreIdent::Num(a), PreIdent::Num(b)) => a.cmp(b),
            (PreIdent::Num(_), PreIdent::Text(_)) => Ordering::Less,
            (PreIdent::Text(_), PreIdent::Num(_)) => Ordering::Greater,
            (PreIdent::Text(a), PreIdent::Text(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for PreIdent {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Why a string is not a [`Version`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid version `{text}`: {reason} (expected a form such as 1.2.3 or 1.0.0-rc.1)")]
pub struct ParseVersionError {
    text: String,
    reason: &'static str,
}

impl ParseVersionError {
    fn new(text: &str, reason: &'static str) -> Self {
        let mut text: String = text.chars().take(MAX_VERSION_LEN + 8).collect();
        text = text.escape_debug().to_string();
        ParseVersionError { text, reason }
    }
}

impl Version {
    /// The release numbers as written (`1.2` gives `[1, 2]`).
    pub fn release(&self) -> &[u64] {
        &self.release
    }

    /// Whether this is a pre-release (`1.0.0-rc.1`).
    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for Version {
    type Err = ParseVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ParseVersionError::new(s, "it is empty"));
        }
        if s.len() > MAX_VERSION_LEN {
            return Err(ParseVersionError::new(s, "it is longer than 64 characters"));
        }
        let (rest, build) = match s.split_once('+') {
            Some((rest, build)) => (rest, Some(build)),
            None => (s, None),
        };
        if let Some(build) = build {
            if build.is_empty()
                || build.split('.').any(|id| {
                    id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
            {
                return Err(ParseVersionError::new(
                    s,
                    "build metadata after `+` must be dot-separated letters, digits and `-`",
                ));
            }
        }
        let (release_text, pre_text) = match rest.split_once('-') {
            Some((release, pre)) => (release, Some(pre)),
            None => (rest, None),
        };
        let mut release = Vec::new();
        for part in release_text.split('.') {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseVersionError::new(
                    s,
                    "the release part must be numbers separated by dots",
                ));
            }
            let n = part
                .parse::<u64>()
                .map_err(|_| ParseVersionError::new(s, "a release number is too large"))?;
            release.push(n);
        }
        if release.len() > MAX_RELEASE_PARTS {
            return Err(ParseVersionError::new(
                s,
                "at most four release numbers are allowed",
            ));
        }
        let mut pre = Vec::new();
        if let Some(pre_text) = pre_text {
            for id in pre_text.split('.') {
                if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return Err(ParseVersionError::new(
                        s,
                        "the pre-release after `-` must be dot-separated letters, digits and `-`",
                    ));
                }
                if id.bytes().all(|b| b.is_ascii_digit()) {
                    let n = id.parse::<u64>().map_err(|_| {
                        ParseVersionError::new(s, "a pre-release number is too large")
                    })?;
                    pre.push(PreIdent::Num(n));
                } else {
                    pre.push(PreIdent::Text(id.to_owned()));
                }
            }
        }
        Ok(Version {
            release,
            pre,
            text: s.to_owned(),
        })
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.release.len().max(other.release.len());
        for i in 0..len {
            let a = self.release.get(i).copied().unwrap_or(0);
            let b = other.release.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => {}
                unequal => return unequal,
            }
        }
        match (self.pre.is_empty(), other.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => self.pre.cmp(&other.pre),
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VersionVisitor;

        impl serde::de::Visitor<'_> for VersionVisitor {
            type Value = Version;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a version such as 1.2.3")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Version, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Version, E> {
                self.visit_str(&v.to_string())
            }
        }

        // `deserialize_str` makes YAML hand over the scalar as written, so
        // `1.10` stays `1.10` instead of becoming the float 1.1.
        deserializer.deserialize_str(VersionVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        match s.parse() {
            Ok(v) => v,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn orders_numerically_not_textually() {
        assert!(v("1.10") > v("1.9"));
        assert!(v("1.2.10") > v("1.2.9"));
        assert!(v("2") > v("1.99.99"));
        assert!(v("2024.01.15") < v("2024.2.1"));
    }

    #[test]
    fn missing_parts_are_zero() {
        assert_eq!(v("1.2"), v("1.2.0"));
        assert_eq!(v("1"), v("1.0.0.0"));
        assert!(v("1.2") < v("1.2.0.1"));
        assert_eq!(v("1.2").to_string(), "1.2");
    }

    #[test]
    fn prerelease_sorts_before_release() {
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1-rc.1",
        ];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn build_metadata_is_ignored_for_ordering() {
        assert_eq!(v("1.0.0+build.1"), v("1.0.0+build.2"));
        assert_eq!(v("1.0.0+build.1").to_string(), "1.0.0+build.1");
    }

    #[test]
    fn rejects_bad_versions_with_reasons() {
        for bad in [
            "",
            "v1.0",
            "1..2",
            "1.2.",
            "1.2.3.4.5",
            "1.0-",
            "1.0-rc..1",
            "1.0+",
            "1 .0",
            "-1",
        ] {
            let err = bad.parse::<Version>().unwrap_err();
            assert!(
                err.to_string().starts_with("invalid version"),
                "{bad}: {err}"
            );
        }
        let long = "1.".repeat(40) + "1";
        assert!(long
            .parse::<Version>()
            .unwrap_err()
            .to_string()
            .contains("64 characters"));
        assert!("99999999999999999999999".parse::<Version>().is_err());
    }

    #[test]
    fn yaml_keeps_the_text_as_written() {
        let parsed: Version = serde_yaml::from_str("1.10").unwrap();
        assert_eq!(parsed.to_string(), "1.10");
        assert!(parsed > v("1.9"));
        let parsed: Version = serde_yaml::from_str("3").unwrap();
        assert_eq!(parsed, v("3.0"));
    }
}
