//! Job ids.
//!
//! A [`JobId`] is 128 random bits. Monitors and servers create ids without
//! asking anyone, and the id is also what makes a server run a command at
//! most once however often the command is retransmitted or merged, so
//! collisions must be negligible over the life of a fleet: with 128 bits,
//! the first collision is expected after about 2^64 jobs. The id is shown in
//! full as 32 hexadecimal digits (in JSON, the audit log, and anywhere it
//! is stored), and to people as its first 12 digits ([`JobId::short`]):
//! 48 bits, so that even among a million recent jobs two short forms clash
//! with a probability of about 2 in a thousand. Lookups accept any prefix of
//! at least [`MIN_PREFIX`] digits, as git does, and report an ambiguous one
//! rather than guess.

use std::fmt;
use std::io;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The fewest hexadecimal digits a job id prefix may have in a lookup.
pub const MIN_PREFIX: usize = 4;

/// A job's id: 128 random bits. See the [module documentation](self).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId([u8; 16]);

impl JobId {
    /// The number of hexadecimal digits in [`JobId::short`].
    pub const SHORT_LEN: usize = 12;

    /// A new id from the system's random number generator.
    pub fn random() -> io::Result<JobId> {
        let mut bytes = [0; 16];
        getrandom::fill(&mut bytes)?;
        Ok(JobId(bytes))
    }

    /// The id with these bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> JobId {
        JobId(bytes)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The first [`JobId::SHORT_LEN`] hexadecimal digits, for people.
    pub fn short(&self) -> String {
        let mut text = self.to_string();
        text.truncate(Self::SHORT_LEN);
        text
    }

    /// Whether the id's hexadecimal form starts with `prefix` (case
    /// ignored).
    pub fn has_prefix(&self, prefix: &str) -> bool {
        let text = self.to_string();
        prefix.len() <= text.len()
            && text
                .bytes()
                .zip(prefix.bytes())
                .all(|(a, b)| a == b.to_ascii_lowercase())
    }
}

/// Whether `prefix` is a valid job id prefix for a lookup: at least
/// [`MIN_PREFIX`] and at most 32 hexadecimal digits.
pub fn is_valid_prefix(prefix: &str) -> bool {
    (MIN_PREFIX..=32).contains(&prefix.len()) && prefix.bytes().all(|b| b.is_ascii_hexdigit())
}

impl fmt::Display for JobId {
    /// 32 lowercase hexadecimal digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({self})")
    }
}

/// The error for text that is not 32 hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a job id of 32 hexadecimal digits, found {0:?}")]
pub struct ParseJobIdError(String);

impl FromStr for JobId {
    type Err = ParseJobIdError;

    /// Parses 32 hexadecimal digits, either case.
    fn from_str(s: &str) -> Result<JobId, ParseJobIdError> {
        let err = || ParseJobIdError(s.to_owned());
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        let mut bytes = [0; 16];
        for (byte, pair) in bytes.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| err())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(JobId(bytes))
    }
}

impl Serialize for JobId {
    /// As its hexadecimal text in human-readable formats (JSON), as 16 bytes
    /// otherwise (postcard).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JobId, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 16]>::deserialize(deserializer).map(JobId)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn job_id_text_forms() -> TestResult {
        let id = JobId::from_bytes([
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55,
            0x66, 0x77,
        ]);
        assert_eq!(id.to_string(), "0123456789abcdef0011223344556677");
        assert_eq!(id.short(), "0123456789ab");
        assert_eq!("0123456789ABCDEF0011223344556677".parse::<JobId>()?, id);
        assert!("0123".parse::<JobId>().is_err());
        assert!("0123456789abcdef001122334455667g".parse::<JobId>().is_err());
        assert!(id.has_prefix("0123456789AB"));
        assert!(!id.has_prefix("1"));
        assert!(is_valid_prefix("0123"));
        assert!(!is_valid_prefix("012"));
        assert!(!is_valid_prefix("012g"));
        assert_eq!(
            serde_json::to_string(&id)?,
            "\"0123456789abcdef0011223344556677\""
        );
        assert_eq!(
            serde_json::from_str::<JobId>("\"0123456789abcdef0011223344556677\"")?,
            id
        );
        let bytes = postcard::to_allocvec(&id)?;
        assert_eq!(bytes.len(), 16);
        assert_eq!(postcard::from_bytes::<JobId>(&bytes)?, id);
        assert_ne!(JobId::random()?, JobId::random()?);
        Ok(())
    }
}
