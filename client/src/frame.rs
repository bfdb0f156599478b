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

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::message::MAX_FRAME;

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
    #[error("frame of {len} bytes is larger than the limit of {max}")]
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

/// Reads one frame's body of at most `max` bytes. `Ok(None)` when the
/// connection ends cleanly before a frame.
pub async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0; 4];
    let mut got = 0;
    while got < len.len() {
        let n = reader.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
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
    let mut body = vec![0; len];
    match reader.read_exact(&mut body).await {
        Ok(_) => Ok(Some(body)),
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

    proptest! {
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
