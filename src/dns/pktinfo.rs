//! Replies from the address the query came to, on sockets bound to a wildcard address.
//!
//! A UDP socket bound to `0.0.0.0` or `::` receives for every local address, but a plain
//! `send_to` lets the kernel pick the reply's source address by routing, which need not be the
//! address the client asked; clients then drop the reply. With IP_PKTINFO / IPV6_RECVPKTINFO each
//! datagram's destination is read on receive and set as the source on send.

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage, recvmsg, sendmsg,
    setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Asks the kernel to report each datagram's destination address.
pub fn enable(socket: &UdpSocket) -> io::Result<()> {
    match socket.local_addr()? {
        SocketAddr::V4(_) => setsockopt(socket, sockopt::Ipv4PacketInfo, &true)?,
        SocketAddr::V6(_) => setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true)?,
    }
    Ok(())
}

fn to_socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// Receives one datagram: its length, its sender, and the local address it was sent to.
pub async fn recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    socket
        .async_io(Interest::READABLE, || {
            let mut iov = [io::IoSliceMut::new(buf)];
            let mut space = nix::cmsg_space!(libc::in6_pktinfo);
            let msg = recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            )?;
            let peer = msg.address.as_ref().and_then(to_socket_addr).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "datagram without a sender address")
            })?;
            let mut local = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for cmsg in cmsgs {
                    match cmsg {
                        ControlMessageOwned::Ipv4PacketInfo(info) => {
                            local = Some(IpAddr::from(info.ipi_addr.s_addr.to_ne_bytes()));
                        }
                        ControlMessageOwned::Ipv6PacketInfo(info) => {
                            local = Some(IpAddr::from(info.ipi6_addr.s6_addr));
                        }
                        _ => {}
                    }
                }
            }
            Ok((msg.bytes, peer, local))
        })
        .await
}

/// Sends a datagram to `to`, from `from` when known.
pub async fn send(
    socket: &UdpSocket,
    data: &[u8],
    to: SocketAddr,
    from: Option<IpAddr>,
) -> io::Result<usize> {
    let dest = SockaddrStorage::from(to);
    socket
        .async_io(Interest::WRITABLE, || {
            let iov = [io::IoSlice::new(data)];
            let fd = socket.as_raw_fd();
            let sent = match from {
                Some(IpAddr::V4(ip)) if dest.family() == Some(nix::sys::socket::AddressFamily::Inet) => {
                    let info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    sendmsg(
                        fd,
                        &iov,
                        &[ControlMessage::Ipv4PacketInfo(&info)],
                        MsgFlags::empty(),
                        Some(&dest),
                    )
                }
                Some(IpAddr::V6(ip)) => {
                    let info = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr { s6_addr: ip.octets() },
                        ipi6_ifindex: 0,
                    };
                    sendmsg(
                        fd,
                        &iov,
                        &[ControlMessage::Ipv6PacketInfo(&info)],
                        MsgFlags::empty(),
                        Some(&dest),
                    )
                }
                _ => sendmsg::<SockaddrStorage>(fd, &iov, &[], MsgFlags::empty(), Some(&dest)),
            };
            sent.map_err(io::Error::from)
        })
        .await
}
