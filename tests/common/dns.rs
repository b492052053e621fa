//! A DNS server on a loopback port of its own, answering SRV and A queries
//! from a fixed table (every address 127.0.0.1), for RFC 3263 tests.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// One SRV record: service name (`_sip._udp.example.test.`), priority,
/// weight, port, target.
pub type SrvRecord = (&'static str, u16, u16, u16, &'static str);

pub struct DnsServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl DnsServer {
    /// Serves `srv`, and A = 127.0.0.1 for every SRV target.
    pub fn start(srv: Vec<SrvRecord>) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let mut response = Message::new();
                response
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_recursion_available(true);
                let mut found = false;
                for question in query.queries() {
                    response.add_query(question.clone());
                    let name = question.name().to_utf8();
                    let answers: Vec<RData> = match question.query_type() {
                        RecordType::SRV => srv
                            .iter()
                            .filter(|r| r.0 == name)
                            .map(|&(_, priority, weight, port, target)| {
                                RData::SRV(SRV::new(
                                    priority,
                                    weight,
                                    port,
                                    Name::from_ascii(target).unwrap(),
                                ))
                            })
                            .collect(),
                        RecordType::A if srv.iter().any(|r| r.4 == name) => {
                            vec![RData::A(A::new(127, 0, 0, 1))]
                        }
                        _ => Vec::new(),
                    };
                    for rdata in answers {
                        found = true;
                        response.add_answer(Record::from_rdata(question.name().clone(), 60, rdata));
                    }
                }
                if !found {
                    response.set_response_code(ResponseCode::NXDomain);
                }
                let _ = socket.send_to(&response.to_vec().unwrap(), from);
            }
        });
        DnsServer { addr, stop }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
