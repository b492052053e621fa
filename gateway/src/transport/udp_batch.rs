//! Datagrams a batch at a time: `recvmmsg` and `sendmmsg` (Linux).
//!
//! Offered four times what it can complete, the gateway reads ~17,000 new
//! INVITEs a second that it refuses, their ACKs, and sends ~17,000 503s: one
//! system call each was a fifth of its time. A batch takes up to [`BATCH`]
//! datagrams, or sends up to [`BATCH`] answers to as many peers, per call.
//!
//! Hand-written over `libc` rather than through `quinn-udp`: that crate
//! sets QUIC's socket options (among them `IP_MTU_DISCOVER`, which makes a
//! SIP message larger than the path MTU fail instead of fragmenting) and
//! sends one destination per call.

use std::io;
use std::mem::zeroed;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Room for the largest UDP payload, so no datagram is truncated.
const SLOT: usize = 65_535;

/// Up to [`BATCH`] datagrams received by one `recvmmsg`.
pub struct RecvBatch {
    /// [`BATCH`] slots of [`SLOT`] bytes. Allocated zeroed and untouched, so
    /// only the pages the kernel writes into become resident.
    buffer: Box<[u8]>,
    names: Box<[socket2::SockAddrStorage]>,
    /// Length and source of each datagram read, by slot; no source for an
    /// address family we do not speak.
    received: Vec<(usize, Option<SocketAddr>)>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            buffer: vec![0u8; BATCH * SLOT].into_boxed_slice(),
            names: (0..BATCH)
                .map(|_| socket2::SockAddrStorage::zeroed())
                .collect(),
            received: Vec::with_capacity(BATCH),
        }
    }
}

impl RecvBatch {
    /// Reads what `fd` holds, up to [`BATCH`] datagrams, without waiting;
    /// `WouldBlock` when it holds nothing.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: zeroed iovec and mmsghdr are valid; every pointer set below
        // points into `self.buffer` or `self.names`, which outlive the call
        // and are not otherwise borrowed during it.
        let mut slices: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (index, (slice, header)) in slices.iter_mut().zip(headers.iter_mut()).enumerate() {
            slice.iov_base = self.buffer[index * SLOT..].as_mut_ptr().cast();
            slice.iov_len = SLOT;
            let name = &mut self.names[index];
            header.msg_hdr.msg_namelen = name.size_of();
            // SAFETY: SockAddrStorage is a sockaddr_storage (repr(transparent)).
            let name: &mut libc::sockaddr_storage = unsafe { name.view_as() };
            header.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_iov = slice;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `headers` holds BATCH initialised headers as set up above.
        let count = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if count < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received.clear();
        for (header, name) in headers
            .iter()
            .zip(self.names.iter_mut())
            .take(count as usize)
        {
            let len = (header.msg_len as usize).min(SLOT);
            let name = std::mem::replace(name, socket2::SockAddrStorage::zeroed());
            // SAFETY: the kernel wrote `msg_namelen` bytes of an address there.
            let from = unsafe { socket2::SockAddr::new(name, header.msg_hdr.msg_namelen) };
            self.received.push((len, from.as_socket()));
        }
        Ok(self.received.len())
    }

    /// The datagrams the last [`RecvBatch::recv`] read, in arrival order.
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.received
            .iter()
            .enumerate()
            .filter_map(|(index, (len, from))| {
                Some((&self.buffer[index * SLOT..index * SLOT + len], (*from)?))
            })
    }
}

/// Answers queued while a batch is handled, sent together after it.
pub struct SendBatch {
    queued: Vec<(Vec<u8>, SocketAddr)>,
    names: Vec<socket2::SockAddr>,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            queued: Vec::with_capacity(BATCH),
            names: Vec::with_capacity(BATCH),
        }
    }
}

impl SendBatch {
    /// Queues `bytes` for `to`. One answer per datagram of a received
    /// batch: the queue holds at most [`BATCH`].
    pub fn push(&mut self, bytes: Vec<u8>, to: SocketAddr) {
        self.queued.push((bytes, to));
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Forgets what is queued (after [`SendBatch::flush`], or when the
    /// socket cannot take it).
    pub fn clear(&mut self) {
        self.queued.clear();
    }

    /// Sends everything queued with as few `sendmmsg` as the kernel allows.
    /// What the socket cannot take now is left out, as a lost datagram
    /// would be: each of these answers a request its sender retransmits.
    /// Returns how many were sent.
    pub fn flush(&mut self, fd: RawFd) -> usize {
        self.names.clear();
        self.names.extend(
            self.queued
                .iter()
                .map(|(_, to)| socket2::SockAddr::from(*to)),
        );
        let (mut next, mut sent) = (0, 0);
        while next < self.queued.len() {
            match self.send_from(fd, next) {
                Ok(count) => {
                    next += count;
                    sent += count;
                }
                // One datagram refused (an ICMP error reported on this
                // socket, an address it cannot reach): skip it.
                Err(error) if error.kind() != io::ErrorKind::WouldBlock => next += 1,
                Err(_) => break,
            }
        }
        sent
    }

    fn send_from(&self, fd: RawFd, first: usize) -> io::Result<usize> {
        let pending = &self.queued[first..];
        let names = &self.names[first..];
        // SAFETY: as in `RecvBatch::recv`; the pointers refer to `pending`
        // and `names`, alive and unborrowed for the duration of the call.
        let mut slices: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let count = pending.len().min(BATCH);
        for index in 0..count {
            let bytes = &pending[index].0;
            slices[index].iov_base = bytes.as_ptr() as *mut libc::c_void;
            slices[index].iov_len = bytes.len();
            headers[index].msg_hdr.msg_name = names[index].as_ptr() as *mut libc::c_void;
            headers[index].msg_hdr.msg_namelen = names[index].len();
            headers[index].msg_hdr.msg_iov = &mut slices[index];
            headers[index].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `count` headers are initialised above.
        let result = unsafe {
            libc::sendmmsg(
                fd,
                headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(result as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn bound(addr: &str) -> UdpSocket {
        let socket = UdpSocket::bind(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
    }

    /// Waits until `socket` holds `count` datagrams, then reads them all.
    fn recv_all(
        batch: &mut RecvBatch,
        socket: &UdpSocket,
        count: usize,
    ) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < count && std::time::Instant::now() < deadline {
            match batch.recv(socket.as_raw_fd()) {
                Ok(_) => got.extend(batch.datagrams().map(|(d, from)| (d.to_vec(), from))),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(error) => panic!("{error}"),
            }
        }
        got
    }

    #[test]
    fn one_call_reads_a_batch_in_order_with_each_source() {
        let receiver = bound("127.0.0.1:0");
        let to = receiver.local_addr().unwrap();
        let (alice, bob) = (bound("127.0.0.1:0"), bound("127.0.0.1:0"));
        let mut batch = RecvBatch::default();
        assert_eq!(
            batch.recv(receiver.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing waiting"
        );
        for index in 0..5 {
            let sender = if index % 2 == 0 { &alice } else { &bob };
            sender
                .send_to(format!("datagram {index}").as_bytes(), to)
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            batch.recv(receiver.as_raw_fd()).unwrap(),
            5,
            "one call, five datagrams"
        );
        let got: Vec<_> = batch
            .datagrams()
            .map(|(d, from)| (d.to_vec(), from))
            .collect();
        for (index, (datagram, from)) in got.iter().enumerate() {
            assert_eq!(datagram, format!("datagram {index}").as_bytes());
            let sender = if index % 2 == 0 { &alice } else { &bob };
            assert_eq!(*from, sender.local_addr().unwrap());
        }
    }

    #[test]
    fn more_than_a_batch_takes_several_calls_and_nothing_is_cut() {
        let receiver = bound("127.0.0.1:0");
        let to = receiver.local_addr().unwrap();
        let sender = bound("127.0.0.1:0");
        let large = vec![b'x'; 60_000];
        sender.send_to(&large, to).unwrap();
        for index in 0..BATCH + 3 {
            sender.send_to(format!("{index}").as_bytes(), to).unwrap();
        }
        let mut batch = RecvBatch::default();
        let got = recv_all(&mut batch, &receiver, BATCH + 4);
        assert_eq!(got.len(), BATCH + 4);
        assert_eq!(got[0].0, large, "a 60,000-byte datagram whole");
        assert_eq!(got[BATCH + 3].0, format!("{}", BATCH + 2).as_bytes());
    }

    #[test]
    fn ipv6_sources_are_read() {
        let receiver = bound("[::1]:0");
        let sender = bound("[::1]:0");
        sender
            .send_to(b"over ipv6", receiver.local_addr().unwrap())
            .unwrap();
        let got = recv_all(&mut RecvBatch::default(), &receiver, 1);
        assert_eq!(
            got,
            vec![(b"over ipv6".to_vec(), sender.local_addr().unwrap())]
        );
    }

    #[test]
    fn one_flush_answers_several_peers_and_skips_one_it_cannot_reach() {
        let socket = bound("127.0.0.1:0");
        let (alice, bob) = (bound("127.0.0.1:0"), bound("127.0.0.1:0"));
        let mut answers = SendBatch::default();
        answers.push(b"to alice".to_vec(), alice.local_addr().unwrap());
        // An IPv4 socket cannot send to an IPv6 address: that one fails
        // alone.
        answers.push(b"nowhere".to_vec(), "[::1]:9".parse().unwrap());
        answers.push(b"to bob".to_vec(), bob.local_addr().unwrap());
        assert_eq!(answers.flush(socket.as_raw_fd()), 2);
        answers.clear();
        assert!(answers.is_empty());
        let mut buf = [0u8; 64];
        let (len, from) = alice.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..len], from),
            (&b"to alice"[..], socket.local_addr().unwrap())
        );
        let (len, _) = bob.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"to bob");
    }

    #[test]
    fn more_answers_than_a_batch_all_go() {
        let socket = bound("127.0.0.1:0");
        let peer = bound("127.0.0.1:0");
        let mut answers = SendBatch::default();
        for index in 0..BATCH + 5 {
            answers.push(format!("{index}").into_bytes(), peer.local_addr().unwrap());
        }
        assert_eq!(answers.flush(socket.as_raw_fd()), BATCH + 5);
        let got = recv_all(&mut RecvBatch::default(), &peer, BATCH + 5);
        assert_eq!(got.len(), BATCH + 5);
        assert_eq!(got[BATCH + 4].0, format!("{}", BATCH + 4).as_bytes());
    }
}
