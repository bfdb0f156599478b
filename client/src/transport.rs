//! Connections between a monitor and a server, over a Unix socket or TCP.
//!
//! # Who may connect
//!
//! - **Unix socket**: the server asks the kernel for the peer's credentials
//!   ([`tokio::net::UnixStream::peer_cred`]) and accepts only the uid that
//!   owns the socket, and root. Anyone else gets
//!   [`ErrorKind::Unauthenticated`] and the connection is closed.
//! - **TCP**: both sides prove that they hold the cluster key, and the rest
//!   of the session is sealed ([`crate::auth`]). A client without the key
//!   gets [`ErrorKind::Unauthenticated`]; a server without it is refused by
//!   the client ([`ClientError::ServerNotAuthenticated`]).
//!
//! In both cases the server returns a [`AcceptError`] for the refused
//! client, which it logs.
//!
//! # Time limits
//!
//! The handshake and the request must arrive within [`HANDSHAKE_TIMEOUT`];
//! a client that connects and says nothing does not hold a connection.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::auth::{self, Handshake, Session, Side};
use crate::frame::{self, FrameError, TAG_LEN};
use crate::key::ClusterKey;
use crate::message::{ErrorKind, Request, ServerMessage, MAX_FRAME};

/// How long the handshake, and then the request, may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream: a Unix or TCP socket, or an in-memory pipe in tests.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// A connection's framing and, on TCP, its sealing.
struct Channel {
    io: Box<dyn ByteStream>,
    session: Option<Session>,
    /// The frame being written by [`Channel::send_package_data`], kept
    /// between frames so that an upload allocates it once.
    out: Vec<u8>,
}

impl Channel {
    fn new(io: Box<dyn ByteStream>) -> Channel {
        Channel {
            io,
            session: None,
            out: Vec::new(),
        }
    }

    async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), FrameError> {
        let mut body = frame::encode(message)?;
        if let Some(session) = &mut self.session {
            session.seal(&mut body)?;
        }
        frame::write_body(&mut self.io, &body).await
    }

    /// Sends a [`Request::PackageData`] holding `data`, built with its
    /// length prefix in one reused buffer: no copy of `data` into a
    /// message, and one write per frame.
    async fn send_package_data(&mut self, data: &[u8]) -> Result<(), FrameError> {
        use tokio::io::AsyncWriteExt;
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        out.extend_from_slice(&[0; 4]);
        frame::encode_package_data_into(data, &mut out)?;
        if let Some(session) = &mut self.session {
            session.seal_from(&mut out, 4)?;
        }
        let len = u32::try_from(out.len() - 4).map_err(|_| FrameError::TooLarge {
            len: out.len() - 4,
            max: u32::MAX as usize,
        })?;
        out[..4].copy_from_slice(&len.to_be_bytes());
        let written = async {
            self.io.write_all(&out).await?;
            self.io.flush().await
        }
        .await;
        self.out = out;
        Ok(written?)
    }

    /// Reads one frame's body into `body` (reusing its allocation) and
    /// opens it when the session is sealed: nothing in `body` is used
    /// before it has been authenticated. `Ok(false)` when the connection
    /// ended cleanly before a frame.
    async fn recv_body(&mut self, body: &mut Vec<u8>) -> Result<bool, FrameError> {
        let max = match self.session {
            Some(_) => MAX_FRAME + TAG_LEN,
            None => MAX_FRAME,
        };
        if !frame::read_body_into(&mut self.io, max, body).await? {
            return Ok(false);
        }
        if let Some(session) = &mut self.session {
            session.open(body)?;
        }
        Ok(true)
    }

    async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let mut body = Vec::new();
        if !self.recv_body(&mut body).await? {
            return Ok(None);
        }
        frame::decode(&body).map(Some)
    }
}

/// One frame of a package upload, as [`ServerConnection::recv_upload`]
/// reads it.
#[derive(Debug)]
pub enum UploadFrame {
    /// A [`Request::PackageData`], its bytes left where they were read.
    Data(PackageData),
    /// Any other request.
    Other(Request),
}

/// The data of a [`Request::PackageData`], inside the (authenticated)
/// frame body it arrived in.
pub struct PackageData {
    body: Vec<u8>,
    data: std::ops::Range<usize>,
}

impl fmt::Debug for PackageData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackageData")
            .field("len", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl PackageData {
    /// The package's bytes.
    pub fn bytes(&self) -> &[u8] {
        // The range was found inside this body, which has not changed
        // since; `get` keeps even a broken invariant from panicking.
        self.body.get(self.data.clone()).unwrap_or_default()
    }

    /// The frame's buffer, to read the next frame into.
    pub fn into_buffer(self) -> Vec<u8> {
        self.body
    }
}

/// Where a monitor connects.
#[derive(Clone)]
pub enum Endpoint {
    /// A server's Unix socket.
    Unix(PathBuf),
    /// A server's TCP address (`HOST:PORT`), and the cluster key to prove.
    Tcp {
        /// `HOST:PORT`.
        addr: String,
        /// The cluster key.
        key: ClusterKey,
    },
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix socket {}", path.display()),
            Endpoint::Tcp { addr, .. } => write!(f, "tcp {addr}"),
        }
    }
}

/// Why a monitor's connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be made.
    #[error("cannot connect to {endpoint}")]
    Connect {
        /// Where.
        endpoint: String,
        /// What the system said.
        source: io::Error,
    },
    /// A frame could not be read, written or decoded.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The server refused the connection or the request.
    #[error("the server refused: {message}")]
    Refused {
        /// Why, as a kind.
        kind: ErrorKind,
        /// Why, for people.
        message: String,
    },
    /// The server's proof of the cluster key is wrong: it does not hold the
    /// key this client holds.
    #[error("the server does not hold our cluster key (is --key the fleet's key?)")]
    ServerNotAuthenticated,
    /// The server sent a message that has no place at this point.
    #[error("protocol error: {0}")]
    Unexpected(String),
    /// The handshake did not complete in time.
    #[error("the server did not complete the handshake within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    /// The server closed the connection before its answer was complete.
    #[error("the server closed the connection")]
    Closed,
    /// The system's random number generator failed.
    #[error("cannot get random bytes from the system: {0}")]
    Random(String),
}

/// A monitor's connection to a server.
pub struct Connection {
    channel: Channel,
    endpoint: String,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to `endpoint`, authenticating over TCP.
    pub async fn connect(endpoint: &Endpoint) -> Result<Connection, ClientError> {
        match endpoint {
            Endpoint::Unix(path) => Connection::connect_unix(path).await,
            Endpoint::Tcp { addr, key } => Connection::connect_tcp(addr, key).await,
        }
    }

    /// Connects to a server's Unix socket.
    pub async fn connect_unix(path: &Path) -> Result<Connection, ClientError> {
        let endpoint = Endpoint::Unix(path.to_owned()).to_string();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                endpoint: endpoint.clone(),
                source,
            })?;
        Ok(Connection {
            channel: Channel::new(Box::new(stream)),
            endpoint,
        })
    }

    /// Connects to a server over TCP and runs the handshake with `key`.
    pub async fn connect_tcp(addr: &str, key: &ClusterKey) -> Result<Connection, ClientError> {
        let endpoint = format!("tcp {addr}");
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                endpoint: endpoint.clone(),
                source,
            })?;
        // Requests and answers are small and interactive.
        let _ = stream.set_nodelay(true);
        Connection::handshake(Box::new(stream), endpoint, key).await
    }

    /// Runs the client side of the handshake on any byte stream.
    pub async fn handshake(
        io: Box<dyn ByteStream>,
        endpoint: String,
        key: &ClusterKey,
    ) -> Result<Connection, ClientError> {
        let mut channel = Channel::new(io);
        let exchange = async {
            let client_nonce = auth::nonce().map_err(|e| ClientError::Random(e.to_string()))?;
            channel
                .send(&Handshake::Hello {
                    nonce: client_nonce,
                })
                .await?;
            let server_nonce = match channel.recv::<Handshake>().await? {
                Some(Handshake::Challenge { nonce }) => nonce,
                Some(Handshake::Refused { kind, message }) => {
                    return Err(ClientError::Refused { kind, message })
                }
                Some(other) => {
                    return Err(ClientError::Unexpected(format!(
                        "expected a challenge, got {other:?}"
                    )))
                }
                None => return Err(ClientError::Closed),
            };
            let mac = auth::proof(key, Side::Client, &client_nonce, &server_nonce);
            channel.send(&Handshake::ClientProof { mac }).await?;
            match channel.recv::<Handshake>().await? {
                Some(Handshake::ServerProof { mac }) => {
                    if !auth::verify_proof(key, Side::Server, &client_nonce, &server_nonce, &mac) {
                        return Err(ClientError::ServerNotAuthenticated);
                    }
                }
                Some(Handshake::Refused { kind, message }) => {
                    return Err(ClientError::Refused { kind, message })
                }
                Some(other) => {
                    return Err(ClientError::Unexpected(format!(
                        "expected the server's proof, got {other:?}"
                    )))
                }
                None => return Err(ClientError::Closed),
            }
            Ok(Session::new(
                key,
                Side::Client,
                &client_nonce,
                &server_nonce,
            ))
        };
        let session = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout)??;
        channel.session = Some(session);
        Ok(Connection { channel, endpoint })
    }

    /// Where the connection goes, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends the request. A server that refused the connection before
    /// reading it is reported as [`ClientError::Refused`].
    pub async fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let sent = self.channel.send(request).await;
        self.refusal_or(sent).await
    }

    /// Sends one [`Request::PackageData`] holding `data` (at most
    /// [`crate::message::MAX_PACKAGE_DATA`] bytes) without copying it
    /// into a message first. Errors as [`Connection::send`].
    pub async fn send_package_data(&mut self, data: &[u8]) -> Result<(), ClientError> {
        let sent = self.channel.send_package_data(data).await;
        self.refusal_or(sent).await
    }

    /// The outcome of a send. The server may have refused and closed
    /// already: its reason is worth more than the broken pipe.
    async fn refusal_or(&mut self, sent: Result<(), FrameError>) -> Result<(), ClientError> {
        match sent {
            Ok(()) => Ok(()),
            Err(FrameError::Io(e)) => match self.recv().await {
                Ok(Some(ServerMessage::Error { kind, message })) => {
                    Err(ClientError::Refused { kind, message })
                }
                _ => Err(FrameError::Io(e).into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// The server's next message; `None` once it has closed the
    /// connection.
    pub async fn recv(&mut self) -> Result<Option<ServerMessage>, ClientError> {
        Ok(self.channel.recv().await?)
    }
}

/// Who a connected client is, as the server knows it; written in the audit
/// log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIdentity {
    /// A local client, by its peer credentials.
    Unix {
        /// Its user id.
        uid: u32,
        /// Its process id, when the kernel gives it.
        pid: Option<i32>,
    },
    /// A remote client that proved it holds the cluster key.
    Tcp {
        /// Its address.
        addr: SocketAddr,
    },
}

impl fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientIdentity::Unix {
                uid,
                pid: Some(pid),
            } => write!(f, "unix uid={uid} pid={pid}"),
            ClientIdentity::Unix { uid, pid: None } => write!(f, "unix uid={uid}"),
            ClientIdentity::Tcp { addr } => write!(f, "tcp {addr} (cluster key)"),
        }
    }
}

/// Why the server did not accept a client.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The kernel did not give the Unix peer's credentials.
    #[error("cannot read the peer credentials: {0}")]
    PeerCredentials(io::Error),
    /// A Unix peer that is neither the socket's owner nor root.
    #[error("refused uid {uid}: only the socket's owner (uid {owner}) and root may connect")]
    ForbiddenUid {
        /// The peer's uid.
        uid: u32,
        /// The socket owner's uid.
        owner: u32,
    },
    /// A TCP client whose proof of the cluster key is wrong.
    #[error("refused {addr}: it does not hold the cluster key")]
    BadProof {
        /// Its address.
        addr: String,
    },
    /// The client broke the handshake's rules.
    #[error("refused {addr}: {detail}")]
    Handshake {
        /// Its address.
        addr: String,
        /// What it did.
        detail: String,
    },
    /// The handshake did not complete in time.
    #[error("refused {addr}: no handshake within {HANDSHAKE_TIMEOUT:?}")]
    Timeout {
        /// Its address.
        addr: String,
    },
    /// Reading or writing failed during the handshake.
    #[error("handshake with {addr} failed")]
    Frame {
        /// Its address.
        addr: String,
        /// What failed.
        source: FrameError,
    },
}

/// Whether a Unix peer with `uid` may use a socket owned by `owner`: only
/// the owner and root may.
pub fn authorize_uid(uid: u32, owner: u32) -> Result<(), AcceptError> {
    if uid == owner || uid == 0 {
        Ok(())
    } else {
        Err(AcceptError::ForbiddenUid { uid, owner })
    }
}

/// The server's side of an accepted, authenticated connection.
pub struct ServerConnection {
    channel: Channel,
    identity: ClientIdentity,
}

impl fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConnection")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl ServerConnection {
    /// Accepts a Unix client if its uid is `owner`'s or root's
    /// ([`authorize_uid`]); otherwise tells it why and returns the error
    /// for the server to log.
    pub async fn accept_unix(
        stream: UnixStream,
        owner: u32,
    ) -> Result<ServerConnection, AcceptError> {
        let cred = stream.peer_cred().map_err(AcceptError::PeerCredentials)?;
        let identity = ClientIdentity::Unix {
            uid: cred.uid(),
            pid: cred.pid(),
        };
        let mut channel = Channel::new(Box::new(stream));
        if let Err(refusal) = authorize_uid(cred.uid(), owner) {
            let message = ServerMessage::Error {
                kind: ErrorKind::Unauthenticated,
                message: format!(
                    "uid {} may not use this socket: only its owner (uid {owner}) and root may",
                    cred.uid()
                ),
            };
            // Best effort: the refusal stands whether or not it arrives.
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, channel.send(&message)).await;
            return Err(refusal);
        }
        Ok(ServerConnection { channel, identity })
    }

    /// Accepts a TCP client if it proves it holds `key`; otherwise tells it
    /// why and returns the error for the server to log.
    pub async fn accept_tcp(
        stream: TcpStream,
        key: &ClusterKey,
    ) -> Result<ServerConnection, AcceptError> {
        let addr = stream.peer_addr().map_err(|e| AcceptError::Frame {
            addr: "an unknown peer".into(),
            source: FrameError::Io(e),
        })?;
        let _ = stream.set_nodelay(true);
        ServerConnection::handshake(Box::new(stream), addr, key).await
    }

    /// Runs the server side of the handshake on any byte stream.
    pub async fn handshake(
        io: Box<dyn ByteStream>,
        addr: SocketAddr,
        key: &ClusterKey,
    ) -> Result<ServerConnection, AcceptError> {
        let name = addr.to_string();
        let mut channel = Channel::new(io);
        let frame_error = |source| AcceptError::Frame {
            addr: name.clone(),
            source,
        };
        let broke = |detail: String| AcceptError::Handshake {
            addr: name.clone(),
            detail,
        };
        let exchange = async {
            let client_nonce = match channel.recv::<Handshake>().await {
                Ok(Some(Handshake::Hello { nonce })) => nonce,
                Ok(Some(other)) => return Err(broke(format!("expected hello, got {other:?}"))),
                Ok(None) => return Err(broke("closed before the handshake".into())),
                Err(FrameError::UnsupportedVersion { found }) => {
                    let refusal = Handshake::Refused {
                        kind: ErrorKind::UnsupportedVersion,
                        message: format!(
                            "this server speaks protocol version {}, the client {found}",
                            frame::PROTOCOL_VERSION
                        ),
                    };
                    let _ = channel.send(&refusal).await;
                    return Err(frame_error(FrameError::UnsupportedVersion { found }));
                }
                Err(e) => return Err(frame_error(e)),
            };
            let server_nonce = auth::nonce().map_err(|e| broke(format!("no random bytes: {e}")))?;
            channel
                .send(&Handshake::Challenge {
                    nonce: server_nonce,
                })
                .await
                .map_err(frame_error)?;
            let mac = match channel.recv::<Handshake>().await {
                Ok(Some(Handshake::ClientProof { mac })) => mac,
                Ok(Some(other)) => return Err(broke(format!("expected a proof, got {other:?}"))),
                Ok(None) => return Err(broke("closed during the handshake".into())),
                Err(e) => return Err(frame_error(e)),
            };
            if !auth::verify_proof(key, Side::Client, &client_nonce, &server_nonce, &mac) {
                let refusal = Handshake::Refused {
                    kind: ErrorKind::Unauthenticated,
                    message: "the client does not hold the cluster key".into(),
                };
                let _ = channel.send(&refusal).await;
                return Err(AcceptError::BadProof { addr: name.clone() });
            }
            let mac = auth::proof(key, Side::Server, &client_nonce, &server_nonce);
            channel
                .send(&Handshake::ServerProof { mac })
                .await
                .map_err(frame_error)?;
            Ok(Session::new(
                key,
                Side::Server,
                &client_nonce,
                &server_nonce,
            ))
        };
        let session = match tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange).await {
            Ok(result) => result?,
            Err(_) => return Err(AcceptError::Timeout { addr: name }),
        };
        channel.session = Some(session);
        Ok(ServerConnection {
            channel,
            identity: ClientIdentity::Tcp { addr },
        })
    }

    /// Who the client is.
    pub fn identity(&self) -> &ClientIdentity {
        &self.identity
    }

    /// Reads the client's request, waiting at most [`HANDSHAKE_TIMEOUT`].
    /// `Ok(None)` when the client closed without one. A frame of another
    /// protocol version is answered with [`ErrorKind::UnsupportedVersion`]
    /// and a malformed one with [`ErrorKind::BadRequest`] before the error
    /// is returned.
    pub async fn recv_request(&mut self) -> Result<Option<Request>, FrameError> {
        let received = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.channel.recv()).await;
        self.answer_errors(received).await
    }

    /// Reads the next frame of a package upload into `buffer` (whose
    /// allocation it reuses; give it [`PackageData::into_buffer`] of an
    /// earlier frame), with the time limit and the answers to bad frames of
    /// [`ServerConnection::recv_request`]. The data of a
    /// [`Request::PackageData`] is left in the buffer, not copied out.
    pub async fn recv_upload(
        &mut self,
        mut buffer: Vec<u8>,
    ) -> Result<Option<UploadFrame>, FrameError> {
        let read = async {
            if !self.channel.recv_body(&mut buffer).await? {
                return Ok(None);
            }
            match frame::package_data_range(&buffer)? {
                Some(data) => Ok(Some(UploadFrame::Data(PackageData { body: buffer, data }))),
                // A package's data the quick look missed (a tag in a
                // longer varint) is still data, as it always was.
                None => match frame::decode(&buffer)? {
                    Request::PackageData(body) => {
                        let data = 0..body.len();
                        Ok(Some(UploadFrame::Data(PackageData { body, data })))
                    }
                    other => Ok(Some(UploadFrame::Other(other))),
                },
            }
        };
        let received = tokio::time::timeout(HANDSHAKE_TIMEOUT, read).await;
        self.answer_errors(received).await
    }

    /// Answers a frame that could not be read as a request (another
    /// protocol version, malformed, too large, or too late) before the
    /// error is returned.
    async fn answer_errors<T>(
        &mut self,
        received: Result<Result<Option<T>, FrameError>, tokio::time::error::Elapsed>,
    ) -> Result<Option<T>, FrameError> {
        let received = match received {
            Ok(received) => received,
            Err(_) => {
                return Err(FrameError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request in time",
                )))
            }
        };
        match received {
            Err(FrameError::UnsupportedVersion { found }) => {
                let reply = ServerMessage::Error {
                    kind: ErrorKind::UnsupportedVersion,
                    message: format!(
                        "this server speaks protocol version {}, the client {found}",
                        frame::PROTOCOL_VERSION
                    ),
                };
                let _ = self.send(&reply).await;
                Err(FrameError::UnsupportedVersion { found })
            }
            Err(e @ (FrameError::Decode(_) | FrameError::TooLarge { .. } | FrameError::Empty)) => {
                let reply = ServerMessage::Error {
                    kind: ErrorKind::BadRequest,
                    message: e.to_string(),
                };
                let _ = self.send(&reply).await;
                Err(e)
            }
            other => other,
        }
    }

    /// Sends a message to the client.
    pub async fn send(&mut self, message: &ServerMessage) -> Result<(), FrameError> {
        self.channel.send(message).await
    }
}

#[cfg(test)]
mod tests;
