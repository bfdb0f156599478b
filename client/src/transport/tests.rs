use super::*;
use crate::message::Request;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn key(byte: u8) -> ClusterKey {
    ClusterKey::from_bytes([byte; 32])
}

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4242))
}

#[test]
fn only_the_owner_and_root_are_authorized() {
    assert!(authorize_uid(1000, 1000).is_ok());
    assert!(authorize_uid(0, 1000).is_ok());
    assert!(matches!(
        authorize_uid(1001, 1000),
        Err(AcceptError::ForbiddenUid {
            uid: 1001,
            owner: 1000
        })
    ));
}

#[tokio::test]
async fn a_client_with_the_key_is_accepted_and_the_session_is_sealed() -> TestResult {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut connection =
            ServerConnection::handshake(Box::new(server_io), addr(), &key(7)).await?;
        let request = connection.recv_request().await?;
        connection
            .send(&ServerMessage::Error {
                kind: ErrorKind::NotFound,
                message: "none".into(),
            })
            .await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(request)
    });
    let mut client = Connection::handshake(Box::new(client_io), "test".into(), &key(7)).await?;
    client.send(&Request::Jobs { limit: 3 }).await?;
    let reply = client.recv().await?;
    assert!(matches!(
        reply,
        Some(ServerMessage::Error {
            kind: ErrorKind::NotFound,
            ..
        })
    ));
    let request = server.await?.map_err(|e| e.to_string())?;
    assert_eq!(request, Some(Request::Jobs { limit: 3 }));
    Ok(())
}

#[tokio::test]
async fn a_client_without_the_key_is_refused() -> TestResult {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        ServerConnection::handshake(Box::new(server_io), addr(), &key(7)).await
    });
    let client = Connection::handshake(Box::new(client_io), "test".into(), &key(8)).await;
    assert!(matches!(
        client,
        Err(ClientError::Refused {
            kind: ErrorKind::Unauthenticated,
            ..
        })
    ));
    assert!(matches!(server.await?, Err(AcceptError::BadProof { .. })));
    Ok(())
}

#[tokio::test]
async fn a_server_without_the_key_is_not_trusted() -> TestResult {
    // A fake server that answers the challenge with a proof made under
    // another key: the client must refuse it before sending a request.
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut channel = Channel::new(Box::new(server_io));
        let Ok(Some(Handshake::Hello { nonce: nc })) = channel.recv::<Handshake>().await else {
            return;
        };
        let ns = [5; 32];
        let _ = channel.send(&Handshake::Challenge { nonce: ns }).await;
        let _ = channel.recv::<Handshake>().await;
        let mac = auth::proof(&key(9), Side::Server, &nc, &ns);
        let _ = channel.send(&Handshake::ServerProof { mac }).await;
    });
    let client = Connection::handshake(Box::new(client_io), "test".into(), &key(7)).await;
    assert!(matches!(client, Err(ClientError::ServerNotAuthenticated)));
    server.await?;
    Ok(())
}

#[tokio::test]
async fn garbage_instead_of_a_handshake_is_refused() -> TestResult {
    use tokio::io::AsyncWriteExt;
    let (mut client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        ServerConnection::handshake(Box::new(server_io), addr(), &key(7)).await
    });
    client_io.write_all(&[0, 0, 0, 3, 1, 0xff, 0xff]).await?;
    drop(client_io);
    assert!(server.await?.is_err());
    Ok(())
}

#[tokio::test]
async fn a_unix_client_of_the_owner_is_accepted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("s.sock");
    let listener = tokio::net::UnixListener::bind(&path)?;
    let me = nix_uid();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        let mut connection = ServerConnection::accept_unix(stream, me)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let request = connection
            .recv_request()
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok::<_, io::Error>((request, connection.identity().clone()))
    });
    let mut client = Connection::connect_unix(&path).await?;
    client.send(&Request::Status).await?;
    let (request, identity) = server.await??;
    assert_eq!(request, Some(Request::Status));
    assert!(matches!(identity, ClientIdentity::Unix { uid, .. } if uid == me));
    Ok(())
}

#[tokio::test]
async fn a_unix_client_of_another_user_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("s.sock");
    let listener = tokio::net::UnixListener::bind(&path)?;
    // Pretend the socket belongs to someone else: this process is then
    // neither the owner nor (unless it runs as root) root.
    let other = nix_uid().wrapping_add(1);
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        Ok::<_, io::Error>(ServerConnection::accept_unix(stream, other).await.err())
    });
    let mut client = Connection::connect_unix(&path).await?;
    let refusal = server.await??;
    if nix_uid() == 0 {
        assert!(refusal.is_none());
    } else {
        assert!(matches!(refusal, Some(AcceptError::ForbiddenUid { .. })));
        assert!(matches!(
            client.recv().await?,
            Some(ServerMessage::Error {
                kind: ErrorKind::Unauthenticated,
                ..
            })
        ));
    }
    Ok(())
}

/// This process's uid, from the metadata of a file it creates.
fn nix_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    tempfile::tempfile()
        .and_then(|f| f.metadata())
        .map(|m| m.uid())
        .unwrap_or(0)
}

#[tokio::test]
async fn upload_frames_are_read_in_place_from_a_sealed_session() -> TestResult {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut connection =
            ServerConnection::handshake(Box::new(server_io), addr(), &key(7)).await?;
        let mut got = Vec::new();
        let mut buffer = Vec::new();
        loop {
            match connection.recv_upload(buffer).await? {
                Some(UploadFrame::Data(data)) => {
                    got.push(data.bytes().to_vec());
                    buffer = data.into_buffer();
                }
                Some(UploadFrame::Other(request)) => {
                    got.push(format!("{request:?}").into_bytes());
                    buffer = Vec::new();
                }
                None => break,
            }
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(got)
    });
    let mut client = Connection::handshake(Box::new(client_io), "test".into(), &key(7)).await?;
    client.send_package_data(&[1, 2, 3]).await?;
    // Either way of sending arrives the same.
    client.send(&Request::PackageData(vec![4; 300])).await?;
    client.send(&Request::Status).await?;
    client.send_package_data(&[]).await?;
    client.send_package_data(&[5; 100]).await?;
    drop(client);
    let got = server.await?.map_err(|e| e.to_string())?;
    assert_eq!(
        got,
        [
            vec![1, 2, 3],
            vec![4; 300],
            b"Status".to_vec(),
            vec![],
            vec![5; 100]
        ]
    );
    Ok(())
}
