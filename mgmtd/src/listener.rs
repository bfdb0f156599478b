//! Where monitors connect: the Unix socket (owner and root only, by peer
//! credentials) and, optionally, TCP (the client proves it holds the
//! cluster key). Connections are bounded by a semaphore; a client over the
//! bound waits in the kernel's backlog. A refused client is logged.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
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
/// run is removed; anything else at the path is refused.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let listener = UnixListener::bind(path)?;
    // Peer credentials are the real check; the mode keeps others from even
    // connecting.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
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
