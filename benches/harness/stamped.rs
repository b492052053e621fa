//! Receiving RTP with the kernel's receive timestamp (`SO_TIMESTAMPNS`).
//!
//! The load tool shares the machine's cores with the gateway; when it is
//! scheduled late, a packet that arrived on time would look late if timed
//! when read. The kernel stamps a datagram as it reaches the socket, which
//! on loopback happens inside the sender's `sendto`.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Asks the kernel to stamp every datagram `socket` receives.
pub fn enable(socket: &UdpSocket) {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option of the right size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(result, 0, "SO_TIMESTAMPNS: {}", io::Error::last_os_error());
}

/// Now on the clock the kernel stamps with (`CLOCK_REALTIME`).
pub fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// One datagram and when the kernel received it.
pub async fn recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, Duration)> {
    socket
        .async_io(Interest::READABLE, || recv_now(socket, &mut *buf))
        .await
}

fn recv_now(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, Duration)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one timespec control message, aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; zero is a valid empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: the header points at `buf` and `control`, both alive and
    // writable for the lengths given.
    let len = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut header, libc::MSG_DONTWAIT) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled,
    // within `msg_controllen`; the timestamp is read unaligned.
    unsafe {
        let mut message = libc::CMSG_FIRSTHDR(&header);
        while !message.is_null() {
            if (*message).cmsg_level == libc::SOL_SOCKET
                && (*message).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let time: libc::timespec =
                    std::ptr::read_unaligned(libc::CMSG_DATA(message).cast());
                stamp = Some(Duration::new(time.tv_sec as u64, time.tv_nsec as u32));
            }
            message = libc::CMSG_NXTHDR(&header, message);
        }
    }
    Ok((len as usize, stamp.unwrap_or_else(wall_clock)))
}
