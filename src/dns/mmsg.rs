//! Batched UDP I/O on Linux: up to `BATCH` datagrams per `recvmmsg` and their responses in one
//! `sendmmsg`. On a saturated core most of a cache hit's cost is the two system calls per query
//! (measured: 77% of the time in the kernel with `recvfrom`/`sendto`), so batching them is the
//! single largest gain on the hot path (bench/README.md).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;

use nix::libc;

pub const BATCH: usize = 32;
/// Larger queries are not DNS queries anyone sends; they are dropped (MSG_TRUNC).
pub const MAX_QUERY: usize = 4096;

/// Receive buffers and their headers, reused for every batch.
pub struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` point into this struct's own vectors, are
// rebuilt before every call, and are not used across threads concurrently.
unsafe impl Send for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![0; BATCH * MAX_QUERY],
            // SAFETY: all-zero is a valid value of these plain C structs.
            addrs: vec![unsafe { zeroed() }; BATCH],
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH],
            hdrs: vec![unsafe { zeroed() }; BATCH],
        }
    }
}

fn to_socket_addr(a: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is large and aligned enough for either family, and ss_family says
    // which one the kernel wrote.
    unsafe {
        match a.ss_family as libc::c_int {
            libc::AF_INET => {
                let v4 = &*(a as *const _ as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(v4.sin_port))))
            }
            libc::AF_INET6 => {
                let v6 = &*(a as *const _ as *const libc::sockaddr_in6);
                let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                    ip,
                    u16::from_be(v6.sin6_port),
                    v6.sin6_flowinfo,
                    v6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

impl RecvBatch {
    /// On a socket in blocking mode: waits for a datagram (up to the socket's read timeout)
    /// and takes, up to `BATCH`, what else is queued.
    pub fn recv_blocking(&mut self, fd: i32) -> io::Result<usize> {
        self.recv(fd, libc::MSG_WAITFORONE)
    }

    /// Takes up to `BATCH` queued datagrams without waiting (`WouldBlock` when there are none).
    pub fn recv_queued(&mut self, fd: i32) -> io::Result<usize> {
        self.recv(fd, libc::MSG_DONTWAIT)
    }

    fn recv(&mut self, fd: i32, flags: libc::c_int) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] =
                libc::iovec { iov_base: self.bufs[i * MAX_QUERY..].as_mut_ptr().cast(), iov_len: MAX_QUERY };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the stated sizes, owned by `self`.
        let n =
            unsafe { libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), BATCH as u32, flags, std::ptr::null_mut()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// The `i`-th datagram received and its sender; `None` for one that was cut short or has
    /// no IP sender.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let h = &self.hdrs[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = (h.msg_len as usize).min(MAX_QUERY);
        Some((&self.bufs[i * MAX_QUERY..i * MAX_QUERY + len], to_socket_addr(&self.addrs[i])?))
    }
}

/// Responses gathered during a batch, sent with one `sendmmsg`.
#[derive(Default)]
pub struct SendBatch {
    data: Vec<Vec<u8>>,
    dests: Vec<socket2::SockAddr>,
    len: usize,
}

impl SendBatch {
    /// A buffer for the next response (cleared), to be committed with `push`.
    pub fn next_buf(&mut self) -> &mut Vec<u8> {
        if self.data.len() == self.len {
            self.data.push(Vec::with_capacity(1232));
        }
        let buf = &mut self.data[self.len];
        buf.clear();
        buf
    }

    /// Commits the buffer `next_buf` gave, to go to `dest`.
    pub fn push(&mut self, dest: SocketAddr) {
        let addr = socket2::SockAddr::from(dest);
        if self.dests.len() == self.len {
            self.dests.push(addr);
        } else {
            self.dests[self.len] = addr;
        }
        self.len += 1;
    }

    /// Sends what is gathered on a socket in blocking mode (waiting while its buffer is full); a
    /// datagram the kernel refuses is skipped.
    pub fn flush_blocking(&mut self, fd: i32) {
        let mut sent = 0;
        while sent < self.len {
            match self.send(fd, sent) {
                Ok(n) if n > 0 => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => sent += 1,
            }
        }
        self.len = 0;
    }

    fn send(&mut self, fd: i32, from: usize) -> io::Result<usize> {
        let n = self.len - from;
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let n = n.min(BATCH);
        for k in 0..n {
            let i = from + k;
            iovs[k] = libc::iovec { iov_base: self.data[i].as_mut_ptr().cast(), iov_len: self.data[i].len() };
            hdrs[k].msg_hdr.msg_name = self.dests[i].as_ptr() as *mut libc::c_void;
            hdrs[k].msg_hdr.msg_namelen = self.dests[i].len();
            hdrs[k].msg_hdr.msg_iov = &mut iovs[k];
            hdrs[k].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the headers point at live buffers and addresses owned by `self` and this frame.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as u32, 0) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
    }
}
