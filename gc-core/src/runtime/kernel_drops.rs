//! Datagrams the kernel dropped because a socket's receive buffer was full:
//! an overload the driver never sees, since the datagrams never reach it.
//!
//! Linux keeps a per-socket count in the `drops` column of
//! `/proc/net/udp` and `/proc/net/udp6` (of the socket's network
//! namespace), found by the socket's inode. It is read only when the
//! application asks for the counters. Elsewhere, or if `/proc` cannot be
//! read, the count is unknown and reported as 0.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// The kernel's receive-buffer drop count of `socket`, if known.
pub(super) fn receive_buffer_drops(socket: &impl AsRawFd) -> Option<u64> {
    // The link /proc/self/fd/N leads to the socket; its inode is the one
    // /proc/net/udp lists.
    let inode = std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
        .ok()?
        .ino();
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .find_map(|text| drops_of(&text, inode))
}

/// The `drops` column of the line of a `/proc/net/udp` table whose `inode`
/// column is `inode`.
fn drops_of(table: &str, inode: u64) -> Option<u64> {
    const INODE: usize = 9;
    const DROPS: usize = 12;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let this: u64 = fields.get(INODE)?.parse().ok()?;
        if this != inode {
            return None;
        }
        fields.get(DROPS)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::{drops_of, receive_buffer_drops};

    const TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 0100007F:A2B3 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 48211 2 0000000000000000 0
  124: 0100007F:A2B4 00000000:0000 07 00000000:00012000 00:00000000 00000000     0        0 48212 2 0000000000000000 917
";

    #[test]
    fn the_line_of_the_inode_gives_the_count() {
        assert_eq!(drops_of(TABLE, 48212), Some(917));
        assert_eq!(drops_of(TABLE, 48211), Some(0));
        assert_eq!(drops_of(TABLE, 1), None);
        assert_eq!(drops_of("header only\n", 48212), None);
        assert_eq!(
            drops_of("h\n 1: 2 3 4 5 6 7 8 9 notanumber 1 2 3\n", 1),
            None
        );
    }

    /// A socket that is never read, with the smallest receive buffer,
    /// flooded from another socket: the kernel drops and counts.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_receive_buffer_is_counted() -> std::io::Result<()> {
        let receiver = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        receiver.set_recv_buffer_size(1)?;
        receiver.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        let receiver: std::net::UdpSocket = receiver.into();
        let to = receiver.local_addr()?;
        assert_eq!(receive_buffer_drops(&receiver), Some(0));
        let sender = std::net::UdpSocket::bind("127.0.0.1:0")?;
        for _ in 0..200 {
            sender.send_to(&[0u8; 1000], to)?;
        }
        let dropped = receive_buffer_drops(&receiver).unwrap_or(0);
        assert!(dropped > 100, "{dropped} drops counted");
        Ok(())
    }
}
