//! RTP port allocation from the configured range: even ports (RTCP takes the
//! odd one above). Fresh ports are tried round-robin, so that a port closed
//! a moment ago is not bound again at once.
//!
//! A call's sockets are not closed when it ends: they rest, still bound, and
//! a later call takes the pair that has rested longest once it has rested
//! [`REST`]. Stray packets of the old call that arrived meanwhile are
//! drained first. Opening and closing two sockets (socket, bind, close and
//! the reactor's registration, twice) was ~8 % of the gateway's CPU at 5,000
//! short calls a second; taking a rested pair costs two reads that find
//! nothing (the drain) and the reactor's registration. Pairs rest in one
//! queue whatever their address: a gateway with media on several addresses
//! reuses a pair only when the longest-resting one has the call's address.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// How long a pair rests before another call may take it. Far longer than
/// a far end keeps sending after BYE (an RTT); what it did send meanwhile is
/// drained before the next call sees the socket.
pub const REST: Duration = Duration::from_millis(250);
/// A pair resting longer than this is closed: after a burst the sockets go
/// back to the system instead of staying open for calls that do not come.
/// The pool pays at hundreds of calls a second and more, where a pair rests
/// well under a second.
pub const IDLE: Duration = Duration::from_secs(2);
/// Most pairs kept resting: half the range, and an eighth of the process's
/// file descriptors (a pair is two), so calls and connections keep theirs.
/// Past it a call's pair is closed when it ends: the pairs already resting
/// are nearer to serving again. At the default range and a rest of 250 ms,
/// the pool serves up to 10,000 calls a second.
fn max_resting(pairs_in_range: usize) -> usize {
    // SAFETY: getrlimit writes the struct it is given and nothing else.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    let files = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    (pairs_in_range / 2).min(files / 8)
}

#[derive(Debug)]
pub struct RtpPorts {
    low: u16,
    count: u32,
    cursor: AtomicU32,
    resting: Mutex<VecDeque<Resting>>,
    max_resting: usize,
}

#[derive(Debug)]
struct Resting {
    since: Instant,
    ip: IpAddr,
    rtp: std::net::UdpSocket,
    rtcp: std::net::UdpSocket,
}

/// A call's RTP and RTCP sockets. Dropped, they rest in the pool they came
/// from (see the module's comment).
#[derive(Debug)]
pub struct RtpSockets {
    pair: Option<(UdpSocket, UdpSocket)>,
    ip: IpAddr,
    home: Arc<RtpPorts>,
}

impl RtpSockets {
    pub fn rtp(&self) -> &UdpSocket {
        &self.pair.as_ref().expect("held until dropped").0
    }

    pub fn rtcp(&self) -> &UdpSocket {
        &self.pair.as_ref().expect("held until dropped").1
    }

    pub fn port(&self) -> u16 {
        self.rtp().local_addr().map(|a| a.port()).unwrap_or(0)
    }
}

impl Drop for RtpSockets {
    fn drop(&mut self) {
        let Some((rtp, rtcp)) = self.pair.take() else {
            return;
        };
        // Leaving the reactor first: the next call may run on another one.
        if let (Ok(rtp), Ok(rtcp)) = (rtp.into_std(), rtcp.into_std()) {
            self.home.rest(self.ip, rtp, rtcp, Instant::now());
        }
    }
}

impl RtpPorts {
    pub fn new(range: RangeInclusive<u16>) -> RtpPorts {
        let low = *range.start() + (*range.start() % 2);
        let count = (u32::from(*range.end()) - u32::from(low)) / 2 + 1;
        RtpPorts {
            low,
            count,
            cursor: AtomicU32::new(rand::random::<u32>() % count.max(1)),
            resting: Mutex::new(VecDeque::new()),
            max_resting: max_resting(count as usize),
        }
    }

    /// A pair of sockets on `ip`: the even port for RTP and the odd one
    /// above it for RTCP (RFC 3550 §11). A pair that has rested long enough
    /// is taken first; otherwise the next free ports are bound.
    pub fn bind(self: &Arc<Self>, ip: IpAddr) -> std::io::Result<RtpSockets> {
        self.bind_at(ip, Instant::now())
    }

    fn bind_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> std::io::Result<RtpSockets> {
        let (rtp, rtcp) = match self.take_rested(ip, now) {
            Some(pair) => pair,
            None => self.bind_fresh(ip)?,
        };
        Ok(RtpSockets {
            pair: Some((UdpSocket::from_std(rtp)?, UdpSocket::from_std(rtcp)?)),
            ip,
            home: Arc::clone(self),
        })
    }

    /// Closes the pairs that rested past [`IDLE`], twice per [`IDLE`],
    /// until `stop` changes: after the last call, nothing else would.
    pub async fn close_idle_pairs(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut every = tokio::time::interval(IDLE / 2);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => drop(self.take_idle(Instant::now())),
                _ = stop.changed() => return,
            }
        }
    }

    /// Pairs resting now.
    pub fn resting(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Resting>> {
        // A panic while holding it leaves a queue of sockets, still valid.
        self.resting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rest(&self, ip: IpAddr, rtp: std::net::UdpSocket, rtcp: std::net::UdpSocket, now: Instant) {
        let pair = Resting {
            since: now,
            ip,
            rtp,
            rtcp,
        };
        let mut resting = self.lock();
        let idle = idle_in(&mut resting, now);
        let overflow = if resting.len() < self.max_resting {
            resting.push_back(pair);
            None
        } else {
            Some(pair)
        };
        drop(resting);
        // Closed outside the lock.
        drop((idle, overflow));
    }

    fn take_idle(&self, now: Instant) -> Vec<Resting> {
        idle_in(&mut self.lock(), now)
    }

    fn take_rested(
        &self,
        ip: IpAddr,
        now: Instant,
    ) -> Option<(std::net::UdpSocket, std::net::UdpSocket)> {
        // The idle pairs are closed outside the lock, when `_idle` goes.
        let (pair, _idle) = {
            let mut resting = self.lock();
            let idle = idle_in(&mut resting, now);
            let ready = resting
                .front()
                .is_some_and(|r| r.ip == ip && now.duration_since(r.since) >= REST);
            (if ready { resting.pop_front() } else { None }, idle)
        };
        pair.map(Resting::reuse)
    }

    fn bind_fresh(
        &self,
        ip: IpAddr,
    ) -> std::io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
        let attempts = self.count.min(256);
        let mut last_error = None;
        for _ in 0..attempts {
            let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % self.count;
            let port = self.low as u32 + slot * 2;
            if port >= u16::MAX as u32 {
                continue;
            }
            let pair =
                std::net::UdpSocket::bind(SocketAddr::new(ip, port as u16)).and_then(|rtp| {
                    let rtcp = std::net::UdpSocket::bind(SocketAddr::new(ip, port as u16 + 1))?;
                    Ok((rtp, rtcp))
                });
            match pair {
                Ok((rtp, rtcp)) => {
                    rtp.set_nonblocking(true)?;
                    rtcp.set_nonblocking(true)?;
                    return Ok((rtp, rtcp));
                }
                Err(error) => last_error = Some(error),
            }
        }
        // Every port may be resting: a pair that rested less is better than
        // refusing the call.
        let rested = {
            let mut resting = self.lock();
            let first = resting.iter().position(|r| r.ip == ip);
            first.and_then(|index| resting.remove(index))
        };
        if let Some(pair) = rested {
            return Ok(pair.reuse());
        }
        Err(last_error.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::AddrInUse, "RTP port range exhausted")
        }))
    }
}

impl Resting {
    /// The pair for a new call, emptied of what the old one was sent.
    fn reuse(self) -> (std::net::UdpSocket, std::net::UdpSocket) {
        drain(&self.rtp);
        drain(&self.rtcp);
        (self.rtp, self.rtcp)
    }
}

/// Removes the pairs that rested past [`IDLE`], to be closed outside the lock.
fn idle_in(resting: &mut VecDeque<Resting>, now: Instant) -> Vec<Resting> {
    let mut idle = Vec::new();
    while resting
        .front()
        .is_some_and(|r| now.duration_since(r.since) > IDLE)
    {
        idle.extend(resting.pop_front());
    }
    idle
}

/// Discards what reached a resting socket: packets of the call that used it.
fn drain(socket: &std::net::UdpSocket) {
    let mut buf = [0u8; 64];
    // Bounded: a far end still flooding the port cannot hold the call here.
    for _ in 0..64 {
        match socket.recv_from(&mut buf) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
            // Another error (a pending socket error) stops nothing: what
            // is queued behind it is drained too.
            _ => {}
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn ports(range: RangeInclusive<u16>) -> Arc<RtpPorts> {
        Arc::new(RtpPorts::new(range))
    }

    #[tokio::test]
    async fn hands_out_even_ports_in_range_and_reuses_after_drop() {
        let ports = ports(41001..=41010);
        let mut held = Vec::new();
        for _ in 0..5 {
            let sockets = ports.bind(LOOPBACK).unwrap();
            let port = sockets.port();
            assert_eq!(sockets.rtcp().local_addr().unwrap().port(), port + 1);
            assert!(
                port.is_multiple_of(2) && (41002..=41010).contains(&port),
                "{port}"
            );
            held.push(sockets);
        }
        assert!(
            ports.bind(LOOPBACK).is_err(),
            "range of 5 even ports is exhausted"
        );
        held.pop();
        assert!(
            ports.bind(LOOPBACK).is_ok(),
            "a dropped pair is taken again rather than refusing the call"
        );
    }

    #[tokio::test]
    async fn a_dropped_pair_rests_then_serves_the_next_call() {
        let ports = ports(41100..=41199);
        let first = ports.bind(LOOPBACK).unwrap();
        let port = first.port();
        drop(first);
        assert_eq!(ports.resting(), 1);

        let soon = ports.bind(LOOPBACK).unwrap();
        assert_ne!(
            soon.port(),
            port,
            "a pair that has not rested is left alone"
        );
        let rested = ports.bind_at(LOOPBACK, Instant::now() + REST).unwrap();
        assert_eq!(rested.port(), port, "the rested pair is taken, still bound");
        assert_eq!(ports.resting(), 0);
    }

    #[tokio::test]
    async fn what_reached_a_resting_pair_is_not_seen_by_the_next_call() {
        let ports = ports(41200..=41299);
        let first = ports.bind(LOOPBACK).unwrap();
        let (rtp, rtcp) = (
            first.rtp().local_addr().unwrap(),
            first.rtcp().local_addr().unwrap(),
        );
        drop(first);
        let far_end = std::net::UdpSocket::bind((LOOPBACK, 0)).unwrap();
        for _ in 0..3 {
            far_end.send_to(b"late RTP of the old call", rtp).unwrap();
            far_end.send_to(b"late RTCP of the old call", rtcp).unwrap();
        }
        // Loopback delivers at once, but give the kernel a moment anyway.
        tokio::time::sleep(Duration::from_millis(20)).await;

        let next = ports.bind_at(LOOPBACK, Instant::now() + REST).unwrap();
        assert_eq!(next.rtp().local_addr().unwrap(), rtp);
        let mut buf = [0u8; 64];
        assert!(next.rtp().try_recv_from(&mut buf).is_err(), "RTP drained");
        assert!(next.rtcp().try_recv_from(&mut buf).is_err(), "RTCP drained");

        far_end.send_to(b"the new call", rtp).unwrap();
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), next.rtp().recv_from(&mut buf))
            .await
            .expect("the reused socket receives")
            .unwrap();
        assert_eq!(&buf[..len], b"the new call");
    }

    #[tokio::test]
    async fn resting_pairs_are_bounded_and_closed_when_idle() {
        // 50 even ports: at most 25 pairs rest.
        let ports = ports(41300..=41399);
        let held: Vec<_> = (0..30).map(|_| ports.bind(LOOPBACK).unwrap()).collect();
        let numbers: Vec<u16> = held.iter().map(|s| s.port()).collect();
        drop(held);
        assert_eq!(ports.resting(), 25);
        // The pairs that ended last were closed: their ports bind again.
        for port in &numbers[25..] {
            std::net::UdpSocket::bind((LOOPBACK, *port)).expect("a closed pair's port is free");
        }

        let later = Instant::now() + IDLE + Duration::from_secs(1);
        let swept = ports.take_idle(later);
        assert_eq!(swept.len(), 25, "the periodic sweep finds every idle pair");
        for pair in swept {
            ports.rest(pair.ip, pair.rtp, pair.rtcp, Instant::now());
        }
        let taken = ports.bind_at(LOOPBACK, later).unwrap();
        assert_eq!(ports.resting(), 0, "pairs idle past IDLE are closed");
        assert!(
            !numbers[..25].contains(&taken.port()),
            "an idle pair is not reused"
        );
        for port in &numbers[..25] {
            std::net::UdpSocket::bind((LOOPBACK, *port)).expect("an idle pair's port is free");
        }
    }

    #[test]
    fn at_most_an_eighth_of_the_file_descriptors_rest() {
        // SAFETY: as in max_resting.
        let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        let files = limit.rlim_cur as usize;
        assert_eq!(max_resting(usize::MAX / 2), files / 8);
        assert_eq!(max_resting(50), 25.min(files / 8));
    }
}
