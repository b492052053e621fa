//! TLS handshakes per second against the gateway's `tls:` listener, next to
//! a bare tokio-rustls server in this process with the same certificate
//! (the reference, measured in the same run on the same cores).
//!
//! Each client loop opens a TCP connection, completes a TLS 1.3 handshake
//! (ECDSA P-256 certificate, ring), sends one OPTIONS, reads the 200 and
//! closes: the cost of a new SIP-over-TLS client, not of a long-lived trunk
//! connection.
//!
//! Then whole calls (INVITE, 200, ACK, BYE, 200 to the echo flow, no
//! media) over long-lived connections, first over TCP and then over TLS to
//! the same gateway in the same run: what TLS adds per call.
//!
//! `cargo bench --bench tls -- [--seconds 10] [--clients 16]`

mod harness;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{arg, proc_cpu_ticks, start_gateway};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEFAULT_CONFIG: &str = include_str!("../config/switchboard.toml");

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Certificates {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn certificates() -> Certificates {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    Certificates {
        ca: ca.der().clone(),
        chain: vec![leaf.der().clone()],
        key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        cert_pem: leaf.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn options(n: u64) -> String {
    format!(
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-tls-{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bench@127.0.0.1>;tag=b{n}\r\nTo: <sip:127.0.0.1>\r\n\
         Call-ID: tls-bench-{n}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// New connections per second against `addr` for `seconds`, with
/// `clients` loops; and how many failed.
async fn hammer(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    clients: u64,
    seconds: u64,
) -> (u64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (done, failed, config) = (done.clone(), failed.clone(), config.clone());
        tasks.push(tokio::spawn(async move {
            let connector = tokio_rustls::TlsConnector::from(config);
            let mut n = client << 32;
            while Instant::now() < deadline {
                n += 1;
                let attempt = async {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    let name = ServerName::IpAddress(addr.ip().into());
                    let mut tls = connector.connect(name, tcp).await?;
                    tls.write_all(options(n).as_bytes()).await?;
                    let mut buf = [0u8; 2048];
                    let mut seen = 0;
                    loop {
                        let read = tls.read(&mut buf[seen..]).await?;
                        if read == 0 {
                            break;
                        }
                        seen += read;
                        if buf[..seen].starts_with(b"SIP/2.0 ")
                            && buf[..seen].ends_with(b"\r\n\r\n")
                        {
                            break;
                        }
                    }
                    Ok::<bool, std::io::Error>(buf[..seen].starts_with(b"SIP/2.0 "))
                };
                match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                    Ok(Ok(true)) => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

/// The reference: accept, handshake, read one request, answer, close.
async fn reference_server(certs: &Certificates) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs.chain.clone(), certs.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 2048];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// One SIP message off a stream: headers and body, framed by
/// Content-Length.
async fn read_message<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    let name = name.trim();
                    (name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l"))
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                buf.drain(..end + 4 + length);
                return Ok(head);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sequential calls on one connection until `deadline`; how many completed.
async fn calls_on<S>(mut stream: S, client: u64, transport: &str, deadline: Instant) -> u64
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let upper = transport.to_ascii_uppercase();
    let mut buf = Vec::new();
    let mut done = 0;
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let id = format!("{client}-{n}");
        let via = |branch: &str| {
            format!("Via: SIP/2.0/{upper} 127.0.0.1:5999;branch=z9hG4bK{branch}{id}\r\n")
        };
        let common = format!(
            "Max-Forwards: 70\r\nFrom: <sip:bench@127.0.0.1>;tag=f{id}\r\nCall-ID: call-{id}@bench\r\n"
        );
        let invite = format!(
            "INVITE sip:100@127.0.0.1;transport={transport} SIP/2.0\r\n{}{common}To: <sip:100@127.0.0.1>\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:bench@127.0.0.1:5999;transport={transport}>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            via("i"),
            sdp.len()
        );
        if stream.write_all(invite.as_bytes()).await.is_err() {
            break;
        }
        let to = loop {
            let Ok(message) = read_message(&mut stream, &mut buf).await else {
                return done;
            };
            if message.starts_with("SIP/2.0 200") && message.contains("INVITE") {
                break message
                    .lines()
                    .find(|l| l.starts_with("To:") || l.starts_with("t:"))
                    .map(|l| l.split_once(':').map_or("", |(_, v)| v).trim().to_string())
                    .unwrap_or_default();
            }
            if message.starts_with("SIP/2.0 ") && !message.starts_with("SIP/2.0 1") {
                return done;
            }
        };
        let ack = format!(
            "ACK sip:100@127.0.0.1;transport={transport} SIP/2.0\r\n{}{common}To: {to}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            via("a")
        );
        let bye = format!(
            "BYE sip:100@127.0.0.1;transport={transport} SIP/2.0\r\n{}{common}To: {to}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            via("b")
        );
        if stream
            .write_all(format!("{ack}{bye}").as_bytes())
            .await
            .is_err()
        {
            break;
        }
        loop {
            let Ok(message) = read_message(&mut stream, &mut buf).await else {
                return done;
            };
            if message.starts_with("SIP/2.0 ") && message.contains(" BYE") {
                break;
            }
        }
        done += 1;
    }
    done
}

/// Calls per second over `clients` connections to `addr`, TLS when
/// `tls` is set; and the gateway's CPU per call.
async fn call_rate(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    clients: u64,
    seconds: u64,
    pid: u32,
) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let before = proc_cpu_ticks(pid);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            tcp.set_nodelay(true).ok()?;
            Some(match tls {
                None => calls_on(tcp, client, "tcp", deadline).await,
                Some(config) => {
                    let name = ServerName::IpAddress(addr.ip().into());
                    let stream = tokio_rustls::TlsConnector::from(config)
                        .connect(name, tcp)
                        .await
                        .ok()?;
                    calls_on(stream, client, "tls", deadline).await
                }
            })
        }));
    }
    let mut calls = 0;
    for task in tasks {
        calls += task.await.ok().flatten().unwrap_or(0);
    }
    let cpu_ms = (proc_cpu_ticks(pid) - before) as f64 * 10.0;
    (
        calls as f64 / seconds as f64,
        if calls > 0 {
            cpu_ms / calls as f64
        } else {
            0.0
        },
    )
}

fn main() {
    let seconds = arg("--seconds", 10);
    let clients = arg("--clients", 16);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    println!(
        "CPU: {cpu}, {} cores; {clients} clients, {seconds} s per run; TLS 1.3, ECDSA P-256, ring",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let certs = certificates();
    let dir = std::env::temp_dir().join(format!("switchboard-tls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, &certs.cert_pem).unwrap();
    std::fs::write(&key_path, &certs.key_pem).unwrap();
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcp_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = DEFAULT_CONFIG.replace(
        r#"listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]"#,
        &format!(r#"listen = ["tls:127.0.0.1:{tls_port}", "tcp:127.0.0.1:{tcp_port}"]"#),
    ) + &format!(
        "\n[sip.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert_path.display(),
        key_path.display()
    );
    let gateway = start_gateway(&config);
    let gateway_addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs.ca.clone()).unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let reference = reference_server(&certs).await;
        let (done, failed) = hammer(reference, client.clone(), clients, seconds).await;
        let reference_rate = done as f64 / seconds as f64;
        println!(
            "reference (tokio-rustls, in process): {reference_rate:>7.0} handshakes+OPTIONS/s, {failed} failed"
        );
        let pid = gateway.child.id();
        let before = proc_cpu_ticks(pid);
        let (done, failed) = hammer(gateway_addr, client.clone(), clients, seconds).await;
        let ticks = proc_cpu_ticks(pid) - before;
        let rate = done as f64 / seconds as f64;
        let cpu_ms = ticks as f64 * 10.0;
        println!(
            "switchboard tls: listener:          {rate:>7.0} handshakes+OPTIONS/s, {failed} failed, \
             gateway CPU {:.0} %, {:.3} ms CPU per handshake; {:.2}x the reference",
            cpu_ms / seconds as f64 / 10.0,
            if done > 0 { cpu_ms / done as f64 } else { 0.0 },
            rate / reference_rate
        );
        let tcp_addr: SocketAddr = format!("127.0.0.1:{tcp_port}").parse().unwrap();
        let (tcp_rate, tcp_cpu) = call_rate(tcp_addr, None, clients, seconds, pid).await;
        println!(
            "calls over TCP (reference):          {tcp_rate:>7.0} calls/s, {tcp_cpu:.3} ms gateway CPU per call"
        );
        let (tls_rate, tls_cpu) =
            call_rate(gateway_addr, Some(client.clone()), clients, seconds, pid).await;
        println!(
            "calls over TLS:                      {tls_rate:>7.0} calls/s, {tls_cpu:.3} ms gateway CPU per call; {:.2}x TCP's rate, {:.2}x its CPU per call",
            tls_rate / tcp_rate,
            tls_cpu / tcp_cpu
        );
    });
}
