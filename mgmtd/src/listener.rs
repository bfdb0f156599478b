//! Where monitors connect: the Unix socket (owner and root only, by peer
//! credentials) and, optionally, TCP (the client proves it holds the
//! cluster key). Connections are bounded by a semaphore; a client over the
//! bound waits in the kernel's backlog. A refused client is logged.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use flotilla_client::{ClusterKey, ServerConnection};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

use crate::maps::MapsHandle;
use crate::server::handler;
use crate::server::ServerHandle;

/// Monitor connections served at once.
pub const MAX_CONNECTIONS: usize = 256;

/// Binds the Unix socket at `path`, mode 0600. A socket left by an earlier
/// run is removed; a socket another server still answers on, or anything
/// else at the path, is refused.
pub fn bind_unix(path: &Path) -> io::Result<(UnixListener, SocketFile)> {
    check_unix_free(path)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let listener = UnixListener::bind(path)?;
    // Peer credentials are the real check; the mode keeps others from even
    // connecting.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let meta = std::fs::symlink_metadata(path)?;
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            identity: (meta.dev(), meta.ino()),
        },
    ))
}

/// Fails unless `path` is free for this server's socket: absent, or a
/// socket nobody answers on (left by a run that was killed). Checked before
/// the daemon joins the group too, so that a second daemon configured with
/// a running one's socket leaves no trace in the fleet.
pub fn check_unix_free(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another server is listening on {}: each mgmtd needs a client.socket of its own",
                        path.display()
                    ),
                ));
            }
            Ok(())
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The socket file this server bound, to remove when it stops: only if it
/// is still this server's (another daemon may have replaced it since).
#[derive(Debug)]
pub struct SocketFile {
    path: std::path::PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    /// Removes the socket file if it is still the one this server bound.
    pub fn remove(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Serves the Unix socket until the task is dropped. Only the uid `owner`
/// (the daemon's) and root are served.
pub async fn serve_unix(
    listener: UnixListener,
    owner: u32,
    server: ServerHandle,
    maps: MapsHandle,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("accept on the client socket failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let server = server.clone();
        let maps = maps.clone();
        tokio::spawn(async move {
            match ServerConnection::accept_unix(stream, owner).await {
                Ok(connection) => handler::serve(connection, server, maps).await,
                Err(e) => tracing::warn!("refused a client on the unix socket: {e}"),
            }
            drop(permit);
        });
    }
}

/// Serves TCP until the task is dropped: only clients that prove they hold
/// `key` are served.
pub async fn serve_tcp(
    listener: TcpListener,
    key: ClusterKey,
    server: ServerHandle,
    maps: MapsHandle,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let key = Arc::new(key);
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("accept on the client TCP listener failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let server = server.clone();
        let key = key.clone();
        let maps = maps.clone();
        tokio::spawn(async move {
            match ServerConnection::accept_tcp(stream, &key).await {
                Ok(connection) => handler::serve(connection, server, maps).await,
                Err(e) => tracing::warn!("refused a TCP client: {e}"),
            }
            drop(permit);
        });
    }
}
