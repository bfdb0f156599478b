//! SHA-256 digests of package files, computed while streaming.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A SHA-256 digest. Prints and parses as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

/// Why a string is not a SHA-256 digest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid sha256 digest `{text}`: expected 64 hex digits")]
pub struct ParseDigestError {
    text: String,
}

impl FromStr for Sha256Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || ParseDigestError {
            text: s
                .chars()
                .take(80)
                .collect::<String>()
                .escape_debug()
                .to_string(),
        };
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(error());
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(error)?;
            let lo = hex_value(pair[1]).ok_or_else(error)?;
            out[i] = hi << 4 | lo;
        }
        Ok(Sha256Digest(out))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The file's digest differs from the one it was advertised with: the file
/// is damaged, truncated, or not the package that was meant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("sha256 mismatch: expected {expected}, got {actual} over {size} bytes")]
pub struct DigestMismatch {
    /// The digest that was advertised.
    pub expected: Sha256Digest,
    /// The digest of the bytes actually read.
    pub actual: Sha256Digest,
    /// How many bytes were read.
    pub size: u64,
}

/// Why [`verify_digest`] or [`verify_file_digest`] failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The bytes were read completely but their digest is not the expected
    /// one.
    #[error(transparent)]
    Mismatch(#[from] DigestMismatch),
    /// Reading the data failed part way; nothing can be said about the
    /// digest.
    #[error("could not read {what} to verify its digest: {source}")]
    Read {
        /// The file, or "the package data" for a reader.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Wraps a writer and hashes and counts everything written through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    stream: Sha256Stream,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            stream: Sha256Stream::new(),
        }
    }

    /// The writer, the digest and the byte count.
    pub(crate) fn finish(self) -> (W, Sha256Digest, u64) {
        let (digest, count) = self.stream.finish();
        (self.inner, digest, count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.stream.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Wraps a reader and hashes and counts everything read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    stream: Sha256Stream,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            stream: Sha256Stream::new(),
        }
    }

    /// Reads whatever is left, then returns the digest and byte count of
    /// everything.
    pub(crate) fn drain(mut self) -> io::Result<(Sha256Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.stream.finish())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.stream.update(&buf[..n]);
        Ok(n)
    }
}

/// Wraps a buffered reader and hashes everything its reader consumes, as
/// it is handed out: bytes handed out but not consumed come back first at
/// the next `fill_buf` (the `BufRead` contract) and are not hashed twice.
pub(crate) struct HashingBufReader<R> {
    inner: R,
    stream: Sha256Stream,
    /// Bytes at the start of the inner buffer already hashed.
    ahead: usize,
}

impl<R: BufRead> HashingBufReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingBufReader {
            inner,
            stream: Sha256Stream::new(),
            ahead: 0,
        }
    }

    /// Reads whatever is left, then returns the digest and byte count of
    /// everything.
    pub(crate) fn drain(mut self) -> io::Result<(Sha256Digest, u64)> {
        loop {
            let len = self.fill_buf()?.len();
            if len == 0 {
                return Ok(self.stream.finish());
            }
            self.consume(len);
        }
    }
}

impl<R: BufRead> BufRead for HashingBufReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let buf = self.inner.fill_buf()?;
        let new = buf.get(self.ahead..).unwrap_or_default();
        self.stream.update(new);
        self.ahead = buf.len();
        Ok(buf)
    }

    fn consume(&mut self, amount: usize) {
        self.inner.consume(amount);
        self.ahead = self.ahead.saturating_sub(amount);
    }
}

impl<R: BufRead> Read for HashingBufReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// The SHA-256 digest and length of everything `reader` yields.
pub fn sha256_reader<R: Read>(reader: R) -> io::Result<(Sha256Digest, u64)> {
    HashingReader::new(reader).drain()
}

/// The SHA-256 digest and length of a file.
pub fn sha256_file(path: &Path) -> io::Result<(Sha256Digest, u64)> {
    sha256_reader(File::open(path)?)
}

/// Reads `reader` to its end and checks that its SHA-256 digest is
/// `expected`. Memory use is constant whatever the size.
pub fn verify_digest<R: Read>(reader: R, expected: &Sha256Digest) -> Result<(), VerifyError> {
    let (actual, size) = sha256_reader(reader).map_err(|source| VerifyError::Read {
        what: "the package data".to_owned(),
        source,
    })?;
    check(expected, actual, size)
}

/// [`verify_digest`] over the file at `path`.
pub fn verify_file_digest(path: &Path, expected: &Sha256Digest) -> Result<(), VerifyError> {
    let what = || format!("{}", PathBuf::from(path).display());
    let file = File::open(path).map_err(|source| VerifyError::Read {
        what: what(),
        source,
    })?;
    let (actual, size) = sha256_reader(file).map_err(|source| VerifyError::Read {
        what: what(),
        source,
    })?;
    check(expected, actual, size)
}

/// A SHA-256 computed piece by piece, for data that arrives in parts (a
/// package received in chunks, hashed in order as they come):
/// [`verify`](Sha256Stream::verify) checks it like [`verify_digest`]
/// without reading the data again.
#[derive(Clone, Default)]
pub struct Sha256Stream {
    hasher: Sha256,
    count: u64,
}

impl fmt::Debug for Sha256Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sha256Stream")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl Sha256Stream {
    /// Nothing hashed yet.
    pub fn new() -> Self {
        Sha256Stream::default()
    }

    /// Hashes the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.count += bytes.len() as u64;
    }

    /// How many bytes were hashed.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest and byte count of everything hashed.
    pub fn finish(self) -> (Sha256Digest, u64) {
        (Sha256Digest(self.hasher.finalize().into()), self.count)
    }

    /// Checks that the digest of everything hashed is `expected`.
    pub fn verify(self, expected: &Sha256Digest) -> Result<(), VerifyError> {
        let (actual, size) = self.finish();
        check(expected, actual, size)
    }
}

pub(crate) fn check(
    expected: &Sha256Digest,
    actual: Sha256Digest,
    size: u64,
) -> Result<(), VerifyError> {
    if actual == *expected {
        Ok(())
    } else {
        Err(DigestMismatch {
            expected: *expected,
            actual,
            size,
        }
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn known_vector_and_hex_round_trip() {
        let (digest, size) = sha256_reader(&b"abc"[..]).unwrap();
        assert_eq!(digest.to_string(), ABC);
        assert_eq!(size, 3);
        assert_eq!(ABC.parse::<Sha256Digest>().unwrap(), digest);
        assert_eq!(ABC.to_uppercase().parse::<Sha256Digest>().unwrap(), digest);
        assert!("abc".parse::<Sha256Digest>().is_err());
        assert!(ABC.replace('a', "g").parse::<Sha256Digest>().is_err());
    }

    #[test]
    fn verify_accepts_match_and_reports_mismatch() {
        let expected: Sha256Digest = ABC.parse().unwrap();
        verify_digest(&b"abc"[..], &expected).unwrap();
        match verify_digest(&b"abd"[..], &expected) {
            Err(VerifyError::Mismatch(m)) => {
                assert_eq!(m.expected, expected);
                assert_ne!(m.actual, expected);
                assert_eq!(m.size, 3);
                assert!(m.to_string().contains(ABC));
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn a_stream_in_pieces_verifies_like_the_whole() {
        let expected: Sha256Digest = ABC.parse().unwrap();
        let mut stream = Sha256Stream::new();
        stream.update(b"a");
        stream.update(b"");
        stream.update(b"bc");
        assert_eq!(stream.count(), 3);
        stream.clone().verify(&expected).unwrap();
        stream.update(b"d");
        assert!(matches!(
            stream.verify(&expected),
            Err(VerifyError::Mismatch(DigestMismatch { size: 4, .. }))
        ));
    }

    #[test]
    fn verify_file_names_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.tar.gz");
        let err = verify_file_digest(&missing, &Sha256Digest([0; 32])).unwrap_err();
        assert!(err.to_string().contains("nope.tar.gz"), "{err}");
        std::fs::write(&missing, b"abc").unwrap();
        verify_file_digest(&missing, &ABC.parse().unwrap()).unwrap();
    }
}
