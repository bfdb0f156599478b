//! Frames: how messages travel on a connection.
//!
//! ```text
//! frame   = length: u32, big-endian | body
//! body    = version: u8 (PROTOCOL_VERSION) | postcard(message)           on a Unix socket, and during the TCP handshake
//! body    = XChaCha20-Poly1305(version | postcard(message)) | tag: 16      on TCP after the handshake
//! ```
//!
//! The length counts the body and is at most [`MAX_FRAME`] (plus the tag
//! when sealed); a longer or empty frame is refused before anything is
//! allocated for it. A body with another version byte is refused with
//! [`FrameError::UnsupportedVersion`], and one that does not decode, or has
//! bytes left after the message, with [`FrameError::Decode`]. Nothing here
//! panics on any input.

use std::io;
use std::ops::Range;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::message::{MAX_FRAME, PACKAGE_DATA_TAG};

/// The protocol version, the first byte of every frame's body.
pub const PROTOCOL_VERSION: u8 = 1;
/// The length of the AEAD tag at the end of a sealed body.
pub const TAG_LEN: usize = 16;

/// Why a frame could not be read, written, encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Reading or writing the connection failed.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The connection ended in the middle of a frame.
    #[error("the connection ended in the middle of a frame")]
    Truncated,
    /// A frame's length is larger than the limit.
    #[error("frame of {len} bytes is larger than the limit of {max} (is the peer a Flotilla server or monitor?)")]
    TooLarge {
        /// The length announced (or, when writing, encoded).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame with an empty body.
    #[error("empty frame")]
    Empty,
    /// The body's version byte is not [`PROTOCOL_VERSION`].
    #[error(
        "the peer speaks protocol version {found}; this side speaks version {PROTOCOL_VERSION}"
    )]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The body is not a valid message.
    #[error("malformed message: {0}")]
    Decode(String),
    /// A message could not be encoded.
    #[error("cannot encode a message: {0}")]
    Encode(String),
    /// A sealed frame failed authentication: it was altered, replayed, or
    /// sealed with another key.
    #[error("a frame failed authentication (altered, replayed, or sealed with another key)")]
    Unauthentic,
    /// The session has sent or received 2^64 frames (never, in practice).
    #[error("the session's frame counter is exhausted")]
    CounterExhausted,
}

/// Encodes `message` as a frame body: the version byte and its postcard
/// encoding. Refuses a body larger than [`MAX_FRAME`].
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_extend(message, vec![PROTOCOL_VERSION])
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: MAX_FRAME,
        });
    }
    Ok(body)
}

/// Decodes a frame body made by [`encode`].
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let Some((&version, rest)) = body.split_first() else {
        return Err(FrameError::Empty);
    };
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion { found: version });
    }
    let (message, extra) =
        postcard::take_from_bytes(rest).map_err(|e| FrameError::Decode(e.to_string()))?;
    if !extra.is_empty() {
        return Err(FrameError::Decode(format!(
            "{} bytes after the message",
            extra.len()
        )));
    }
    Ok(message)
}

/// Where the data of a [`Request::PackageData`] body lies in it, found
/// without copying the data out (a package upload is thousands of such
/// frames). `Ok(None)` when the body holds another request: decode it with
/// [`decode`]. The body is checked as [`decode`] checks it (version, a
/// length that fits, nothing after the message), with the same errors.
///
/// [`Request::PackageData`]: crate::message::Request::PackageData
pub fn package_data_range(body: &[u8]) -> Result<Option<Range<usize>>, FrameError> {
    let Some((&version, rest)) = body.split_first() else {
        return Err(FrameError::Empty);
    };
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion { found: version });
    }
    let Some((&PACKAGE_DATA_TAG, fields)) = rest.split_first() else {
        return Ok(None);
    };
    let (data, extra): (&[u8], &[u8]) =
        postcard::take_from_bytes(fields).map_err(|e| FrameError::Decode(e.to_string()))?;
    if !extra.is_empty() {
        return Err(FrameError::Decode(format!(
            "{} bytes after the message",
            extra.len()
        )));
    }
    let end = body.len();
    Ok(Some(end - data.len()..end))
}

/// Encodes a [`Request::PackageData`] holding `data` as a frame body
/// appended to `out`, as [`encode`] would, without first copying `data`
/// into a message.
///
/// [`Request::PackageData`]: crate::message::Request::PackageData
pub fn encode_package_data_into(data: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    let mut body = std::mem::take(out);
    body.extend_from_slice(&[PROTOCOL_VERSION, PACKAGE_DATA_TAG]);
    *out = postcard::to_extend(serde_bytes::Bytes::new(data), body)
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - start;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    Ok(())
}

/// Reads one frame's body of at most `max` bytes. `Ok(None)` when the
/// connection ends cleanly before a frame.
pub async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut body = Vec::new();
    Ok(read_body_into(reader, max, &mut body)
        .await?
        .then_some(body))
}

/// Reads one frame's body of at most `max` bytes into `body`, replacing
/// its contents but keeping its allocation, so that a stream of large
/// frames (a package upload) costs no allocation, zeroing or page faults
/// per frame. `Ok(false)` when the connection ends cleanly before a frame.
/// The length is checked before `body` grows.
pub async fn read_body_into<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
    body: &mut Vec<u8>,
) -> Result<bool, FrameError> {
    let mut len = [0; 4];
    let mut got = 0;
    while got < len.len() {
        let n = reader.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(false)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    // Only bytes past the old length are zeroed: none when frames of one
    // size follow each other.
    body.resize(len, 0);
    match reader.read_exact(body).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(FrameError::Io(e)),
    }
}

/// Writes one frame with this body (at most `u32::MAX` bytes; the callers
/// bound it far lower) and flushes it.
pub async fn write_body<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &[u8],
) -> Result<(), FrameError> {
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: body.len(),
        max: u32::MAX as usize,
    })?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Request, ServerMessage};
    use proptest::prelude::*;

    #[test]
    fn encode_decode_round_trip() -> Result<(), FrameError> {
        let body = encode(&Request::Jobs { limit: 7 })?;
        assert_eq!(body[0], PROTOCOL_VERSION);
        assert_eq!(decode::<Request>(&body)?, Request::Jobs { limit: 7 });
        Ok(())
    }

    #[test]
    fn other_versions_and_trailing_bytes_are_refused() -> Result<(), FrameError> {
        let mut body = encode(&Request::Status)?;
        body.push(0);
        assert!(matches!(
            decode::<Request>(&body),
            Err(FrameError::Decode(_))
        ));
        body[0] = 9;
        assert!(matches!(
            decode::<Request>(&body),
            Err(FrameError::UnsupportedVersion { found: 9 })
        ));
        assert!(matches!(decode::<Request>(&[]), Err(FrameError::Empty)));
        Ok(())
    }

    #[tokio::test]
    async fn oversized_and_empty_frames_are_refused_before_allocating() {
        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert!(matches!(
            read_body(&mut huge, MAX_FRAME).await,
            Err(FrameError::TooLarge {
                len: 0xffff_ffff,
                max: MAX_FRAME
            })
        ));
        let mut empty: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(
            read_body(&mut empty, MAX_FRAME).await,
            Err(FrameError::Empty)
        ));
        let mut short: &[u8] = &[0, 0, 0, 9, 1, 2];
        assert!(matches!(
            read_body(&mut short, MAX_FRAME).await,
            Err(FrameError::Truncated)
        ));
        let mut half_header: &[u8] = &[0, 0];
        assert!(matches!(
            read_body(&mut half_header, MAX_FRAME).await,
            Err(FrameError::Truncated)
        ));
        let mut nothing: &[u8] = &[];
        assert!(matches!(read_body(&mut nothing, MAX_FRAME).await, Ok(None)));
    }

    #[test]
    fn a_message_larger_than_a_frame_is_not_encoded() {
        let line = "x".repeat(MAX_FRAME);
        let message = ServerMessage::Error {
            kind: crate::message::ErrorKind::Internal,
            message: line,
        };
        assert!(matches!(encode(&message), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn the_package_data_tag_is_its_variant_index() -> Result<(), FrameError> {
        let body = encode(&Request::PackageData(vec![7, 8]))?;
        assert_eq!(body, [PROTOCOL_VERSION, PACKAGE_DATA_TAG, 2, 7, 8]);
        Ok(())
    }

    #[test]
    fn package_data_is_found_in_place_and_built_as_encode_builds_it() -> Result<(), FrameError> {
        // Over 127 bytes: a two-byte length.
        let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let mut body = encode(&Request::PackageData(data.clone()))?;
        let mut built = vec![0xaa];
        encode_package_data_into(&data, &mut built)?;
        assert_eq!(built[0], 0xaa);
        assert_eq!(built[1..], body[..]);
        let range = package_data_range(&body)?;
        assert_eq!(range.map(|r| body[r].to_vec()), Some(data));
        assert_eq!(package_data_range(&encode(&Request::Status)?)?, None);
        let cut = &body[..body.len() - 1];
        assert!(matches!(
            package_data_range(cut),
            Err(FrameError::Decode(_))
        ));
        body.push(0);
        assert!(matches!(
            package_data_range(&body),
            Err(FrameError::Decode(_))
        ));
        body[0] = 9;
        assert!(matches!(
            package_data_range(&body),
            Err(FrameError::UnsupportedVersion { found: 9 })
        ));
        assert!(matches!(package_data_range(&[]), Err(FrameError::Empty)));
        Ok(())
    }

    #[test]
    fn package_data_larger_than_a_frame_is_not_built() {
        let mut out = vec![1, 2];
        assert!(matches!(
            encode_package_data_into(&vec![0; MAX_FRAME], &mut out),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(out, [1, 2]);
    }

    #[tokio::test]
    async fn a_reused_buffer_holds_exactly_each_frame() -> Result<(), FrameError> {
        let mut stream = Vec::new();
        for body in [&[1u8, 2, 3, 4, 5][..], &[6, 7], &[8, 9, 10]] {
            stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
            stream.extend_from_slice(body);
        }
        let mut reader: &[u8] = &stream;
        let mut buffer = Vec::new();
        let mut bodies = Vec::new();
        while read_body_into(&mut reader, MAX_FRAME, &mut buffer).await? {
            bodies.push(buffer.clone());
        }
        assert_eq!(bodies, [vec![1, 2, 3, 4, 5], vec![6, 7], vec![8, 9, 10]]);
        Ok(())
    }

    proptest! {
        #[test]
        fn the_quick_look_agrees_with_decode(body in proptest::collection::vec(any::<u8>(), 0..512), tag in any::<bool>()) {
            let mut framed = vec![PROTOCOL_VERSION];
            if tag {
                framed.push(PACKAGE_DATA_TAG);
            }
            framed.extend_from_slice(&body);
            match package_data_range(&framed) {
                Ok(Some(range)) => prop_assert_eq!(
                    decode::<Request>(&framed).ok(),
                    Some(Request::PackageData(framed[range].to_vec()))
                ),
                Ok(None) => {}
                Err(_) => prop_assert!(decode::<Request>(&framed).is_err()),
            }
        }


        #[test]
        fn garbage_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Request>(&body);
            let _ = decode::<ServerMessage>(&body);
        }

        #[test]
        fn garbage_bodies_with_the_right_version_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut framed = vec![PROTOCOL_VERSION];
            framed.extend_from_slice(&body);
            let _ = decode::<Request>(&framed);
            let _ = decode::<ServerMessage>(&framed);
        }

        #[test]
        fn garbage_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let runtime = tokio::runtime::Builder::new_current_thread().build();
            prop_assume!(runtime.is_ok());
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    let mut reader: &[u8] = &bytes;
                    while let Ok(Some(body)) = read_body(&mut reader, MAX_FRAME).await {
                        let _ = decode::<Request>(&body);
                    }
                });
            }
        }
    }
}
