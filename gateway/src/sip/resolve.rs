//! Locating a SIP server (RFC 3263, without NAPTR): an IP literal is used
//! as it is; a host name with a port gets A/AAAA; a host name without one
//! gets SRV (`_sip._udp` / `_sip._tcp`, or the one its `;transport=` names,
//! `_sips._tcp` for TLS),
//! ordered by priority and weighted at random (RFC 2782), and A/AAAA at
//! 5060 when it has no SRV records.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use rand::Rng;

use super::transaction::{Peer, Transport};
use super::uri::{Host, SipUri};

/// Host names remembered for TLS peers, beyond which an arbitrary half is
/// forgotten (a forgotten one is verified by its IP address instead).
const MAX_SERVER_NAMES: usize = 4096;

/// Which host name each TLS peer address was resolved from: the name its
/// certificate must be valid for, since a peer is only an address by the
/// time a connection to it opens.
#[derive(Default)]
pub struct ServerNames {
    names: std::sync::Mutex<std::collections::HashMap<SocketAddr, String>>,
}

impl ServerNames {
    pub fn remember(&self, addr: SocketAddr, host: &str) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if names.len() >= MAX_SERVER_NAMES && !names.contains_key(&addr) {
            let forget: Vec<SocketAddr> =
                names.keys().take(MAX_SERVER_NAMES / 2).copied().collect();
            for addr in forget {
                names.remove(&addr);
            }
        }
        names.insert(addr, host.to_string());
    }

    pub fn host_of(&self, addr: SocketAddr) -> Option<String> {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned()
    }
}

/// Most places one dial tries, one after another (RFC 3263 §4.3).
pub const MAX_CANDIDATES: usize = 4;

/// DNS for dial targets and registrars: the system's resolver settings
/// (`/etc/resolv.conf`, `/etc/hosts`), or name servers the operator named.
#[derive(Clone)]
pub struct Resolver {
    dns: Option<TokioResolver>,
    /// Where a TLS peer's host name is noted for certificate checks.
    server_names: Option<Arc<ServerNames>>,
}

impl Resolver {
    /// The system's configuration; without a readable one, host names are
    /// resolved by the system's `getaddrinfo` (no SRV).
    pub fn system() -> Resolver {
        match TokioResolver::builder_tokio() {
            Ok(builder) => Resolver {
                dns: Some(builder.build()),
                server_names: None,
            },
            Err(error) => {
                tracing::warn!(%error, "no usable DNS configuration: SRV lookups are off");
                Resolver {
                    dns: None,
                    server_names: None,
                }
            }
        }
    }

    /// These name servers only (UDP and TCP), e.g. a local one in tests.
    pub fn with_servers(servers: &[SocketAddr]) -> Resolver {
        let mut group = NameServerConfigGroup::new();
        for server in servers {
            group.merge(NameServerConfigGroup::from_ips_clear(
                &[server.ip()],
                server.port(),
                true,
            ));
        }
        let config = ResolverConfig::from_parts(None, Vec::new(), group);
        let dns =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default()).build();
        Resolver {
            dns: Some(dns),
            server_names: None,
        }
    }

    /// Notes in `names` the host each TLS peer is resolved from.
    pub fn noting_tls_names(mut self, names: Arc<ServerNames>) -> Resolver {
        self.server_names = Some(names);
        self
    }

    /// Where to send requests for `uri`; `transport` from its
    /// `;transport=` parameter (or `sips:`) when it has one. A TLS peer
    /// found by name must present a certificate for that name.
    pub async fn resolve(
        &self,
        uri: &SipUri,
        transport: Option<Transport>,
    ) -> Result<Peer, String> {
        Ok(self.resolve_all(uri, transport).await?.remove(0))
    }

    /// Every place to try for `uri`, in RFC 3263 order (§4.3: after a
    /// transport error, a timeout or a 503, try the next): SRV targets by
    /// priority and weight, and each name's addresses. At most
    /// [`MAX_CANDIDATES`].
    pub async fn resolve_all(
        &self,
        uri: &SipUri,
        transport: Option<Transport>,
    ) -> Result<Vec<Peer>, String> {
        let mut found = self.locate_all(uri, transport).await?;
        found.dedup();
        found.truncate(MAX_CANDIDATES);
        if let (Transport::Tls, Host::Domain(domain), Some(names)) =
            (found[0].transport, &uri.host, &self.server_names)
        {
            for peer in &found {
                names.remember(peer.addr, domain);
            }
        }
        Ok(found)
    }

    /// Never empty when `Ok`.
    async fn locate_all(
        &self,
        uri: &SipUri,
        transport: Option<Transport>,
    ) -> Result<Vec<Peer>, String> {
        let domain = match &uri.host {
            Host::Ip(ip) => {
                let transport = transport.unwrap_or(Transport::Udp);
                let port = uri.port.unwrap_or(transport.default_port());
                return Ok(vec![Peer {
                    transport,
                    addr: SocketAddr::new(*ip, port),
                }]);
            }
            Host::Domain(domain) => domain,
        };
        let at = |transport: Transport, port: u16| {
            move |ip: IpAddr| Peer {
                transport,
                addr: SocketAddr::new(ip, port),
            }
        };
        if let Some(port) = uri.port {
            let transport = transport.unwrap_or(Transport::Udp);
            let ips = self.addresses(domain).await?;
            return Ok(ips.into_iter().map(at(transport, port)).collect());
        }
        let candidates: &[Transport] = match transport {
            Some(Transport::Udp) => &[Transport::Udp],
            Some(Transport::Tcp) => &[Transport::Tcp],
            Some(Transport::Tls) => &[Transport::Tls],
            None => &[Transport::Udp, Transport::Tcp],
        };
        for candidate in candidates {
            let service = match candidate {
                Transport::Tls => format!("_sips._tcp.{domain}."),
                other => format!("_sip._{other}.{domain}."),
            };
            let ordered = order_srv(self.srv(&service).await, &mut rand::rng());
            let mut peers = Vec::new();
            for (port, target) in ordered {
                if let Ok(ips) = self.addresses(&target).await {
                    peers.extend(ips.into_iter().map(at(*candidate, port)));
                }
                if peers.len() >= MAX_CANDIDATES {
                    break;
                }
            }
            if !peers.is_empty() {
                return Ok(peers);
            }
        }
        let transport = transport.unwrap_or(Transport::Udp);
        let ips = self.addresses(domain).await?;
        Ok(ips
            .into_iter()
            .map(at(transport, transport.default_port()))
            .collect())
    }

    /// SRV records: (priority, weight, port, target).
    async fn srv(&self, name: &str) -> Vec<(u16, u16, u16, String)> {
        let Some(dns) = &self.dns else {
            return Vec::new();
        };
        match dns.srv_lookup(name).await {
            Ok(lookup) => lookup
                .iter()
                .map(|srv| {
                    (
                        srv.priority(),
                        srv.weight(),
                        srv.port(),
                        srv.target().to_utf8().trim_end_matches('.').to_string(),
                    )
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Every address of `host` (never empty when `Ok`).
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        if let Some(dns) = &self.dns {
            // Its own /etc/hosts reading covers local names.
            let fqdn = if host.contains('.') && !host.ends_with('.') {
                format!("{host}.")
            } else {
                host.to_string()
            };
            let found = dns
                .lookup_ip(fqdn)
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?;
            let ips: Vec<IpAddr> = found.iter().take(MAX_CANDIDATES).collect();
            if ips.is_empty() {
                return Err(format!("{host} has no address"));
            }
            return Ok(ips);
        }
        // Without a DNS configuration, the system's own lookup.
        let found = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        let mut ips: Vec<IpAddr> = found.map(|addr| addr.ip()).take(MAX_CANDIDATES).collect();
        ips.dedup();
        if ips.is_empty() {
            return Err(format!("{host} has no address"));
        }
        Ok(ips)
    }
}

/// RFC 2782 order: lowest priority first; within a priority, at random in
/// proportion to weight. A target of `.` means "no service here".
pub fn order_srv(
    mut records: Vec<(u16, u16, u16, String)>,
    rng: &mut impl Rng,
) -> Vec<(u16, String)> {
    records.retain(|(_, _, _, target)| !target.is_empty() && target != ".");
    records.sort_by_key(|(priority, _, _, _)| *priority);
    let mut ordered = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let priority = records[0].0;
        let end = records
            .iter()
            .position(|r| r.0 != priority)
            .unwrap_or(records.len());
        let mut group: Vec<_> = records.drain(..end).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.1)).sum();
            let index = if total == 0 {
                0
            } else {
                let mut pick = rng.random_range(0..total);
                group
                    .iter()
                    .position(|r| {
                        let weight = u32::from(r.1);
                        if pick < weight {
                            true
                        } else {
                            pick -= weight;
                            false
                        }
                    })
                    .unwrap_or(0)
            };
            let (_, _, port, target) = group.remove(index);
            ordered.push((port, target));
        }
    }
    ordered
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn srv_priority_first_then_weight() {
        let records = vec![
            (20, 0, 5080, "backup.example.com".to_string()),
            (10, 90, 5060, "a.example.com".to_string()),
            (10, 10, 5062, "b.example.com".to_string()),
            (10, 0, 5064, ".".to_string()),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut first_a = 0;
        for _ in 0..1000 {
            let ordered = order_srv(records.clone(), &mut rng);
            assert_eq!(ordered.len(), 3);
            assert_eq!(ordered[2], (5080, "backup.example.com".to_string()));
            if ordered[0].1 == "a.example.com" {
                first_a += 1;
            }
        }
        assert!(
            (850..=950).contains(&first_a),
            "weight 90 of 100 won {first_a} times"
        );
    }

    /// A DNS server on loopback that knows one SIP service: SRV for
    /// `_sip._tcp.pbx.test` (priority 10 → b, priority 20 → a) and the A
    /// records of its targets.
    async fn dns_server() -> SocketAddr {
        use hickory_proto::op::{Message, MessageType, ResponseCode};
        use hickory_proto::rr::rdata::{A, SRV};
        use hickory_proto::rr::{Name, RData, Record, RecordType};
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
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
                    let answers: Vec<RData> = match (question.query_type(), name.as_str()) {
                        (RecordType::SRV, "_sip._tcp.pbx.test.") => vec![
                            RData::SRV(SRV::new(
                                20,
                                0,
                                5080,
                                Name::from_ascii("a.pbx.test.").unwrap(),
                            )),
                            RData::SRV(SRV::new(
                                10,
                                0,
                                5070,
                                Name::from_ascii("b.pbx.test.").unwrap(),
                            )),
                        ],
                        (RecordType::A, "a.pbx.test.") => vec![RData::A(A::new(127, 0, 0, 2))],
                        (RecordType::A, "b.pbx.test.") => vec![RData::A(A::new(127, 0, 0, 3))],
                        (RecordType::A, "pbx.test.") => vec![RData::A(A::new(127, 0, 0, 4))],
                        _ => vec![],
                    };
                    for rdata in answers {
                        found = true;
                        response.add_answer(Record::from_rdata(question.name().clone(), 60, rdata));
                    }
                }
                if !found {
                    response.set_response_code(ResponseCode::NXDomain);
                }
                let _ = socket.send_to(&response.to_vec().unwrap(), from).await;
            }
        });
        addr
    }

    /// RFC 3263 against a real DNS exchange: no port and no transport →
    /// SRV (no UDP records, so TCP), lowest priority first; with a port,
    /// A only.
    #[tokio::test]
    async fn srv_then_a_through_a_dns_server() {
        let resolver = Resolver::with_servers(&[dns_server().await]);
        let uri = SipUri::parse("sip:agent@pbx.test").unwrap();
        let peer = resolver.resolve(&uri, None).await.unwrap();
        assert_eq!(peer.transport, Transport::Tcp);
        assert_eq!(peer.addr, "127.0.0.3:5070".parse().unwrap());
        let uri = SipUri::parse("sip:agent@pbx.test:5099").unwrap();
        let peer = resolver.resolve(&uri, None).await.unwrap();
        assert_eq!(
            (peer.transport, peer.addr),
            (Transport::Udp, "127.0.0.4:5099".parse().unwrap())
        );
        let uri = SipUri::parse("sip:agent@nowhere.test").unwrap();
        assert!(resolver.resolve(&uri, Some(Transport::Udp)).await.is_err());
    }

    /// Every candidate in order, for failover: b (priority 10) before a
    /// (priority 20); with a port, the name's addresses.
    #[tokio::test]
    async fn every_candidate_in_rfc_3263_order() {
        let resolver = Resolver::with_servers(&[dns_server().await]);
        let uri = SipUri::parse("sip:agent@pbx.test").unwrap();
        let peers = resolver.resolve_all(&uri, None).await.unwrap();
        let found: Vec<(Transport, SocketAddr)> =
            peers.iter().map(|p| (p.transport, p.addr)).collect();
        assert_eq!(
            found,
            vec![
                (Transport::Tcp, "127.0.0.3:5070".parse().unwrap()),
                (Transport::Tcp, "127.0.0.2:5080".parse().unwrap()),
            ]
        );
        let uri = SipUri::parse("sip:agent@127.0.0.1:5090").unwrap();
        let peers = resolver.resolve_all(&uri, None).await.unwrap();
        assert_eq!(peers.len(), 1);
        let uri = SipUri::parse("sip:agent@nowhere.test").unwrap();
        assert!(resolver
            .resolve_all(&uri, Some(Transport::Udp))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn literals_and_hosts_resolve_without_dns_servers() {
        let names = Arc::new(ServerNames::default());
        let resolver = Resolver {
            dns: None,
            server_names: None,
        }
        .noting_tls_names(names.clone());
        let uri = SipUri::parse("sips:a@localhost").unwrap();
        let peer = resolver.resolve(&uri, Some(Transport::Tls)).await.unwrap();
        assert_eq!(peer.addr.port(), 5061, "TLS defaults to 5061");
        assert_eq!(names.host_of(peer.addr).as_deref(), Some("localhost"));
        let uri = SipUri::parse("sip:a@127.0.0.1:5090;transport=tcp").unwrap();
        let peer = resolver.resolve(&uri, Some(Transport::Tcp)).await.unwrap();
        assert_eq!(peer.addr, "127.0.0.1:5090".parse().unwrap());
        assert_eq!(peer.transport, Transport::Tcp);
        let uri = SipUri::parse("sip:a@[::1]").unwrap();
        let peer = resolver.resolve(&uri, None).await.unwrap();
        assert_eq!(peer.addr, "[::1]:5060".parse().unwrap());
        let uri = SipUri::parse("sip:a@localhost:5099").unwrap();
        let peer = resolver.resolve(&uri, None).await.unwrap();
        assert!(peer.addr.ip().is_loopback() && peer.addr.port() == 5099);
    }
}
