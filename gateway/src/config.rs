//! The gateway's configuration as it appears in `switchboard.toml`, and the
//! checks serde cannot make. Reading the file and `${ENV}` interpolation are
//! the binary's job; this module only sees parsed values.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use serde::Deserialize;
use switchboard_flows::FlowConfig;

use crate::call::dial::{DialPolicy, Ringback};
use crate::registrar::users::Directory;
use crate::registrar::Policy;
use crate::registration::manager::RegistrationSpec;
use crate::routing::Router;
use crate::sip::authenticator::AuthSettings;
use crate::sip::digest::Algorithm;
use crate::sip::transaction::Transport;
use crate::sip::uri::SipUri;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub sip: SipConfig,
    #[serde(default)]
    pub media: MediaConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub dial: DialConfig,
    #[serde(default)]
    pub registrar: RegistrarConfig,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub registrations: Vec<RegistrationConfig>,
    #[serde(default)]
    pub trunks: Vec<TrunkConfig>,
    #[serde(default)]
    pub flows: Vec<FlowConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    /// `udp:IP:PORT`, `tcp:IP:PORT` or `tls:IP:PORT` (with `[sip.tls]`);
    /// IPv6 as `udp:[::1]:5060`.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Address written into Contact and SDP when the listen address is a
    /// wildcard or sits behind NAT.
    #[serde(default)]
    pub public_address: Option<IpAddr>,
    /// Name servers (`IP:PORT`) for dial targets and registrars; the
    /// system's (`/etc/resolv.conf`) when empty.
    #[serde(default)]
    pub dns_servers: Vec<String>,
    /// Certificates for `tls:` listeners and trust for outbound TLS.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            public_address: None,
            dns_servers: Vec::new(),
            tls: None,
        }
    }
}

/// `[sip.tls]`: files are read at start-up and again on every reload, so a
/// renewed certificate takes effect without a restart.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain `tls:` listeners present (leaf first).
    #[serde(default)]
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert`.
    #[serde(default)]
    pub key: Option<std::path::PathBuf>,
    /// PEM CA certificates trusted for outbound TLS, beside the system's
    /// roots (a private PBX's CA).
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// PEM CA certificates whose client certificates a trunk's
    /// `tls_client_names` can require; clients are asked for one only
    /// when this is set.
    #[serde(default)]
    pub client_ca: Option<std::path::PathBuf>,
}

/// Where calls may be sent: the toll-fraud guard. Bots, TwiML and the API
/// may only dial (or REFER to) targets one of `allow` matches; a flow's own
/// `on_failure = { dial }` is the operator's and is not checked.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialConfig {
    /// Regexes over the whole target URI, e.g. `'^sip:[^@]+@pbx\.example\.com(;|\?|$)'`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// What a caller hears while a transfer rings: `us`, `eu`, `uk` or `none`.
    #[serde(default)]
    pub ringback: Option<String>,
}

fn default_listen() -> Vec<String> {
    vec!["udp:127.0.0.1:5060".into(), "tcp:127.0.0.1:5060".into()]
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Inclusive UDP port range for RTP, `"20000-30000"`.
    #[serde(default = "default_rtp_ports")]
    pub rtp_ports: String,
    /// A call whose caller sends no RTP for this long is ended.
    #[serde(default = "default_rtp_timeout")]
    pub rtp_timeout_secs: u64,
    /// Playout delay the jitter buffer holds before it starts.
    #[serde(default = "default_jitter_ms")]
    pub jitter_depth_ms: u32,
    /// Let the jitter buffer follow the network's measured jitter between
    /// `jitter_min_ms` and `jitter_max_ms` (starting at `jitter_depth_ms`).
    #[serde(default = "default_true")]
    pub jitter_adaptive: bool,
    #[serde(default = "default_jitter_min_ms")]
    pub jitter_min_ms: u32,
    #[serde(default = "default_jitter_max_ms")]
    pub jitter_max_ms: u32,
    /// While the bot is silent: send silence packets (keeps NAT bindings and
    /// strict endpoints happy) or nothing (RFC 3551 silence suppression;
    /// the next talkspurt carries the marker bit).
    #[serde(default)]
    pub send_silence: SendSilence,
    /// Codecs we accept, best first; the best one both sides offer wins.
    #[serde(default = "default_codecs")]
    pub codecs: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SendSilence {
    #[default]
    Always,
    Never,
}

fn default_true() -> bool {
    true
}
fn default_jitter_min_ms() -> u32 {
    20
}
fn default_jitter_max_ms() -> u32 {
    200
}

fn default_codecs() -> Vec<String> {
    ["opus", "g722", "pcmu", "pcma"].map(String::from).to_vec()
}

/// The codec a `media.codecs` entry names.
pub fn codec_named(name: &str) -> Option<switchboard_media::Codec> {
    use switchboard_media::Codec;
    [Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma]
        .into_iter()
        .find(|c| c.name().eq_ignore_ascii_case(name))
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            rtp_ports: default_rtp_ports(),
            rtp_timeout_secs: default_rtp_timeout(),
            jitter_depth_ms: default_jitter_ms(),
            jitter_adaptive: true,
            send_silence: SendSilence::default(),
            jitter_min_ms: default_jitter_min_ms(),
            jitter_max_ms: default_jitter_max_ms(),
            codecs: default_codecs(),
        }
    }
}

fn default_rtp_ports() -> String {
    "20000-30000".into()
}
fn default_rtp_timeout() -> u64 {
    30
}
fn default_jitter_ms() -> u32 {
    40
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Concurrent calls; the next INVITE gets 503 with Retry-After.
    #[serde(default = "default_max_calls")]
    pub max_calls: usize,
    /// TCP connections in all; accepts beyond are refused.
    #[serde(default = "default_tcp_connections")]
    pub tcp_connections: usize,
    /// Accepted TCP connections from one source IP.
    #[serde(default = "default_tcp_connections_per_ip")]
    pub tcp_connections_per_ip: usize,
    /// A SIP message on TCP must arrive whole within this many seconds of
    /// its first byte (a new connection's first message too).
    #[serde(default = "default_tcp_message_timeout_secs")]
    pub tcp_message_timeout_secs: u64,
    /// A TCP connection silent this long (keep-alives count) is closed.
    #[serde(default = "default_tcp_idle_timeout_secs")]
    pub tcp_idle_timeout_secs: u64,
    /// A new INVITE that waited longer than this for the SIP endpoint is
    /// answered 503 + Retry-After before any call state exists: under
    /// overload the gateway keeps completing calls instead of collapsing.
    #[serde(default = "default_overload_delay_ms")]
    pub overload_delay_ms: u64,
    /// While tasks wait longer than this on average for a CPU, new INVITEs
    /// are answered 503 + Retry-After by the socket tasks (stateless).
    #[serde(default = "default_overload_task_delay_ms")]
    pub overload_task_delay_ms: u64,
    /// Once new calls find every place taken, while tasks wait longer than
    /// this on average for a CPU, the places shrink to what runs on time
    /// (an adaptive limit below `max_calls`; `call_limit.rs`). 0 = off.
    #[serde(default = "default_overload_call_delay_ms")]
    pub overload_call_delay_ms: u64,
    /// New requests (INVITE, REGISTER, OPTIONS… without a To tag) one
    /// source IP may send per second on average; beyond it they are
    /// dropped at the socket. Trunks' `allow` networks are exempt. 0 = off.
    #[serde(default = "default_new_requests_per_ip")]
    pub new_requests_per_ip: u32,
    /// How many of them a source may send at once before the rate applies.
    #[serde(default = "default_new_requests_burst_per_ip")]
    pub new_requests_burst_per_ip: u32,
    /// SIP endpoint workers (shards by Call-ID), each with its own
    /// transactions and calls; 0 = one per CPU.
    #[serde(default)]
    pub sip_workers: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_calls: default_max_calls(),
            tcp_connections: default_tcp_connections(),
            tcp_connections_per_ip: default_tcp_connections_per_ip(),
            tcp_message_timeout_secs: default_tcp_message_timeout_secs(),
            tcp_idle_timeout_secs: default_tcp_idle_timeout_secs(),
            overload_delay_ms: default_overload_delay_ms(),
            overload_task_delay_ms: default_overload_task_delay_ms(),
            overload_call_delay_ms: default_overload_call_delay_ms(),
            new_requests_per_ip: default_new_requests_per_ip(),
            new_requests_burst_per_ip: default_new_requests_burst_per_ip(),
            sip_workers: 0,
        }
    }
}

impl LimitsConfig {
    /// How many endpoint shards run: `sip_workers`, or one per CPU.
    pub fn endpoint_shards(&self) -> usize {
        match self.sip_workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn tcp(&self) -> crate::transport::tcp::TcpLimits {
        crate::transport::tcp::TcpLimits {
            max_connections: self.tcp_connections,
            max_per_ip: self.tcp_connections_per_ip,
            message_timeout: std::time::Duration::from_secs(self.tcp_message_timeout_secs),
            idle_timeout: std::time::Duration::from_secs(self.tcp_idle_timeout_secs),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("limits.tcp_connections", self.tcp_connections as u64),
            (
                "limits.tcp_connections_per_ip",
                self.tcp_connections_per_ip as u64,
            ),
            (
                "limits.tcp_message_timeout_secs",
                self.tcp_message_timeout_secs,
            ),
            ("limits.tcp_idle_timeout_secs", self.tcp_idle_timeout_secs),
            ("limits.overload_delay_ms", self.overload_delay_ms),
            ("limits.overload_task_delay_ms", self.overload_task_delay_ms),
            (
                "limits.new_requests_burst_per_ip",
                self.new_requests_burst_per_ip as u64,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if self.sip_workers > MAX_SIP_WORKERS {
            return Err(ConfigError::new(
                "limits.sip_workers",
                format!("at most {MAX_SIP_WORKERS} (0 = one per CPU)"),
            ));
        }
        if self.tcp_idle_timeout_secs < self.tcp_message_timeout_secs {
            return Err(ConfigError::new(
                "limits.tcp_idle_timeout_secs",
                "must not be shorter than tcp_message_timeout_secs",
            ));
        }
        Ok(())
    }
}

/// More workers than this only add queues: each is one task.
const MAX_SIP_WORKERS: usize = 256;

/// Under T1 (500 ms), so a shed caller hears 503 before it would
/// retransmit, and above the endpoint's occasional stalls on a 2-vCPU VM
/// (200 ms shed ~0.1 % of calls at 3,500/s with the CPUs half idle).
fn default_overload_delay_ms() -> u64 {
    400
}

/// A healthy runtime runs a woken task within a millisecond; a 2-vCPU
/// VM's occasional stall (steal time, a burst of timers) stays below this
/// average, a saturated one does not.
fn default_overload_task_delay_ms() -> u64 {
    50
}

/// 10 ms: offered 2x and 4x its peak, 5 ms and 10 ms completed as many
/// calls, but 5 ms also refused calls at the peak after a stall
/// (BENCHMARKS.md, "The adaptive call limit").
fn default_overload_call_delay_ms() -> u64 {
    10
}

/// Far above a phone's or an office NAT's needs (a REGISTER per phone per
/// minute or so, a few calls), far below a flood.
fn default_new_requests_per_ip() -> u32 {
    100
}

fn default_new_requests_burst_per_ip() -> u32 {
    400
}

fn default_tcp_connections() -> usize {
    10_000
}

fn default_tcp_connections_per_ip() -> usize {
    256
}

fn default_tcp_message_timeout_secs() -> u64 {
    10
}

fn default_tcp_idle_timeout_secs() -> u64 {
    300
}

fn default_max_calls() -> usize {
    1000
}

/// The HTTP API (`/health`, `/metrics`, the Calls API); off unless
/// `listen` is set.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `IP:PORT`, e.g. `"127.0.0.1:8080"`.
    #[serde(default)]
    pub listen: Option<String>,
    /// The Twilio-style Calls API's HTTP basic-auth user (Twilio's
    /// Account SID). The Calls API answers 401 to everyone without it.
    #[serde(default)]
    pub account_sid: Option<String>,
    /// Its password (Twilio's auth token); also the key that signs webhooks.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// Where calls placed with `Record=true` are recorded (a stereo WAV
    /// per call); without it `Record=true` is refused.
    #[serde(default)]
    pub recording_dir: Option<std::path::PathBuf>,
}

/// Who may use the Calls API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiCredentials {
    pub account_sid: String,
    pub auth_token: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    pub name: String,
    /// Source IPs and CIDRs allowed to send calls on this trunk. May be
    /// empty when `auth` is set (a carrier whose addresses change).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Digest credentials every call from this trunk must present (407).
    #[serde(default)]
    pub auth: Option<TrunkAuth>,
    /// Tried in order; the first pattern matching the dialed number wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Where calls to phone numbers (`<Dial><Number>`, an E.164 `To`)
    /// leave through this carrier.
    #[serde(default)]
    pub outbound: Option<TrunkOutboundConfig>,
    /// When set, calls on this trunk must come over TLS with a client
    /// certificate (signed by `sip.tls.client_ca`) valid for one of these
    /// names; anything else gets 403.
    #[serde(default)]
    pub tls_client_names: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkOutboundConfig {
    /// The carrier's SIP proxy: `sip:host[:port][;transport=tcp]`.
    pub proxy: String,
    /// Digest credentials for the carrier's challenges.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// The host of our From (the carrier's domain; default: the proxy's).
    #[serde(default)]
    pub from_domain: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkAuth {
    pub username: String,
    pub password: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Regex over the dialed number (last `#`-separated piece of the
    /// Request-URI user part).
    pub pattern: String,
    /// The flow the call goes to...
    #[serde(default)]
    pub flow: Option<String>,
    /// ...or the registered user whose phones ring.
    #[serde(default)]
    pub user: Option<String>,
}

/// Our registrar: softphones register here and call (and are called).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrarConfig {
    /// Domains we are the registrar for: a REGISTER for any other domain is
    /// refused (404), and only `sip:user@DOMAIN` rings our users. Empty:
    /// REGISTER for any domain; a registered user's call to
    /// `sip:bob@anything` rings bob, while a bot's or a flow's dial rings
    /// him only when addressed to one of our own IP addresses.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Digest realm; the first domain (or "switchboard") by default.
    #[serde(default)]
    pub realm: Option<String>,
    /// Challenge algorithms in order, `MD5` and/or `SHA-256`; one challenge
    /// per algorithm (RFC 8760). MD5 alone by default: many phones give up
    /// on a challenge naming SHA-256.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_min_expires")]
    pub min_expires: u32,
    #[serde(default = "default_max_expires")]
    pub max_expires: u32,
    #[serde(default = "default_max_expires")]
    pub default_expires: u32,
    /// Contacts one user may have registered at once.
    #[serde(default = "default_max_contacts")]
    pub max_contacts: usize,
    /// Where authenticated users' calls go when the user has no `flow` of
    /// its own (regex over the dialed user, like trunk routes).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Shared bindings in Redis (`redis://127.0.0.1:6379/0`) for several
    /// gateways; in memory when unset.
    #[serde(default)]
    pub redis: Option<String>,
    /// How long a nonce is good for, seconds.
    #[serde(default = "default_nonce_ttl")]
    pub nonce_ttl_secs: u64,
    /// Failed authentications per source IP (and per username) within a
    /// minute before that source (or name) is refused outright.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            domains: Vec::new(),
            realm: None,
            algorithms: default_algorithms(),
            min_expires: default_min_expires(),
            max_expires: default_max_expires(),
            default_expires: default_max_expires(),
            max_contacts: default_max_contacts(),
            routes: Vec::new(),
            redis: None,
            nonce_ttl_secs: default_nonce_ttl(),
            max_failures: default_max_failures(),
        }
    }
}

fn default_algorithms() -> Vec<String> {
    vec!["MD5".into()]
}
fn default_min_expires() -> u32 {
    60
}
fn default_max_expires() -> u32 {
    3600
}
fn default_max_contacts() -> usize {
    10
}
fn default_nonce_ttl() -> u64 {
    300
}
fn default_max_failures() -> u32 {
    10
}

/// The gateway registered to a PBX or provider as one of its extensions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Names it in the API, logs, callbacks and `<Sip registration>`.
    pub id: String,
    /// The registrar: `host[:port][;transport=udp|tcp]`.
    pub proxy: String,
    pub username: String,
    pub password: String,
    /// Digest username, when it differs from `username`.
    #[serde(default)]
    pub auth_user: Option<String>,
    /// Send everything here instead (`host[:port][;transport=…]`).
    #[serde(default)]
    pub outbound_proxy: Option<String>,
    #[serde(default = "default_registration_expires")]
    pub expires: u32,
    /// Calls the PBX sends to this extension go to this flow.
    pub flow: String,
    /// Told (JSON POST) when the registration turns successful or failed.
    #[serde(default)]
    pub status_callback: Option<String>,
}

fn default_registration_expires() -> u32 {
    3600
}

/// A user who registers and calls with a username and password.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub username: String,
    /// The password (from the environment: `"${ALICE_PASSWORD}"`)...
    #[serde(default)]
    pub password: Option<String>,
    /// ...or MD5(username:realm:password), so the password is never stored.
    #[serde(default)]
    pub ha1: Option<String>,
    /// The flow this user's calls go to; `[registrar] routes` otherwise.
    #[serde(default)]
    pub flow: Option<String>,
}

/// A configuration value that parsed but cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("key `{key}`: {reason}")]
pub struct ConfigError {
    /// Dotted path of the key, e.g. `trunks[0].routes[1].pattern`.
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// One socket the gateway listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl ListenAddr {
    pub fn parse(text: &str) -> Result<ListenAddr, String> {
        let (scheme, rest) = text.split_once(':').ok_or_else(|| {
            format!("`{text}` is not `udp:IP:PORT`, `tcp:IP:PORT` or `tls:IP:PORT`")
        })?;
        let transport = Transport::from_name(scheme)
            .ok_or_else(|| format!("transport `{scheme}` is not udp, tcp or tls"))?;
        let addr = rest
            .parse::<SocketAddr>()
            .map_err(|_| format!("`{rest}` is not IP:PORT (IPv6 as [::1]:5060)"))?;
        Ok(ListenAddr { transport, addr })
    }
}

impl Config {
    /// Everything a running gateway needs, checked up front so a bad file
    /// refuses to start instead of failing on the first call.
    pub fn validate(&self) -> Result<ValidConfig, ConfigError> {
        let mut listen = Vec::new();
        if self.sip.listen.is_empty() {
            return Err(ConfigError::new("sip.listen", "needs at least one address"));
        }
        for (index, text) in self.sip.listen.iter().enumerate() {
            let parsed = ListenAddr::parse(text)
                .map_err(|reason| ConfigError::new(format!("sip.listen[{index}]"), reason))?;
            if listen.contains(&parsed) {
                return Err(ConfigError::new(
                    format!("sip.listen[{index}]"),
                    format!("`{text}` is listed twice"),
                ));
            }
            listen.push(parsed);
        }
        let tls = std::sync::Arc::new(crate::transport::tls::TlsMaterial::load(
            self.sip.tls.as_ref(),
            listen.iter().any(|l| l.transport == Transport::Tls),
        )?);
        for (index, trunk) in self.trunks.iter().enumerate() {
            if !trunk.tls_client_names.is_empty() && !tls.verifies_clients {
                return Err(ConfigError::new(
                    format!("trunks[{index}].tls_client_names"),
                    "needs sip.tls.client_ca to verify client certificates against",
                ));
            }
        }
        let rtp_ports = parse_port_range(&self.media.rtp_ports)
            .map_err(|reason| ConfigError::new("media.rtp_ports", reason))?;
        if self.media.rtp_timeout_secs == 0 {
            return Err(ConfigError::new(
                "media.rtp_timeout_secs",
                "must be at least 1",
            ));
        }
        if !(20..=1000).contains(&self.media.jitter_depth_ms) {
            return Err(ConfigError::new(
                "media.jitter_depth_ms",
                "must be between 20 and 1000",
            ));
        }
        let media = &self.media;
        if media.jitter_min_ms < 20 || media.jitter_min_ms > media.jitter_max_ms {
            return Err(ConfigError::new(
                "media.jitter_min_ms",
                "must be at least 20 and at most media.jitter_max_ms",
            ));
        }
        if media.jitter_max_ms > 1000 {
            return Err(ConfigError::new(
                "media.jitter_max_ms",
                "must be at most 1000",
            ));
        }
        if self.media.codecs.is_empty() {
            return Err(ConfigError::new(
                "media.codecs",
                "must name at least one codec",
            ));
        }
        for (index, name) in self.media.codecs.iter().enumerate() {
            if codec_named(name).is_none() {
                return Err(ConfigError::new(
                    format!("media.codecs[{index}]"),
                    format!("{name:?} is not one of opus, g722, pcmu, pcma"),
                ));
            }
        }
        if self.limits.max_calls == 0 {
            return Err(ConfigError::new("limits.max_calls", "must be at least 1"));
        }
        let mut names = HashSet::new();
        for (index, flow) in self.flows.iter().enumerate() {
            flow.validate().map_err(|error| {
                ConfigError::new(format!("flows[{index}].{}", error.key), error.reason)
            })?;
            if !names.insert(flow.name.as_str()) {
                return Err(ConfigError::new(
                    format!("flows[{index}].name"),
                    format!("flow `{}` is defined twice", flow.name),
                ));
            }
        }
        let user_names: HashSet<&str> = self.users.iter().map(|u| u.username.as_str()).collect();
        let router = Router::new(&self.trunks, &self.registrar.routes, &names, &user_names)?;
        let realm = self
            .registrar
            .realm
            .clone()
            .or_else(|| self.registrar.domains.first().cloned())
            .unwrap_or_else(|| "switchboard".to_string());
        let directory = Directory::new(&self.users, &self.trunks, &realm, &names)?;
        let registrar = &self.registrar;
        let mut algorithms = Vec::new();
        for (index, name) in registrar.algorithms.iter().enumerate() {
            let algorithm = Algorithm::parse(name).ok_or_else(|| {
                ConfigError::new(
                    format!("registrar.algorithms[{index}]"),
                    format!("`{name}` is not MD5 or SHA-256"),
                )
            })?;
            algorithms.push(algorithm);
        }
        if algorithms.is_empty() {
            return Err(ConfigError::new(
                "registrar.algorithms",
                "needs at least one",
            ));
        }
        if !algorithms.contains(&Algorithm::Md5) {
            // An `ha1` is MD5(username:realm:password): without an MD5
            // challenge its user could never log in.
            if let Some(index) = self.users.iter().position(|u| u.ha1.is_some()) {
                return Err(ConfigError::new(
                    format!("users[{index}].ha1"),
                    "is an MD5 hash, but registrar.algorithms does not offer MD5",
                ));
            }
        }
        if registrar.min_expires == 0 || registrar.min_expires > registrar.max_expires {
            return Err(ConfigError::new(
                "registrar.min_expires",
                "must be at least 1 and at most registrar.max_expires",
            ));
        }
        if registrar.default_expires < registrar.min_expires
            || registrar.default_expires > registrar.max_expires
        {
            return Err(ConfigError::new(
                "registrar.default_expires",
                "must lie between registrar.min_expires and registrar.max_expires",
            ));
        }
        if registrar.max_contacts == 0 {
            return Err(ConfigError::new(
                "registrar.max_contacts",
                "must be at least 1",
            ));
        }
        if registrar.nonce_ttl_secs < 10 {
            return Err(ConfigError::new(
                "registrar.nonce_ttl_secs",
                "must be at least 10",
            ));
        }
        if registrar.max_failures == 0 {
            return Err(ConfigError::new(
                "registrar.max_failures",
                "must be at least 1",
            ));
        }
        if let Some(url) = &registrar.redis {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://"))
            {
                return Err(ConfigError::new(
                    "registrar.redis",
                    format!("`{url}` is not a redis:// URL"),
                ));
            }
        }
        let api_credentials = self.api_credentials()?;
        self.limits.validate()?;
        let api_listen = match &self.api.listen {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(
                    "api.listen",
                    format!("`{text}` is not IP:PORT (IPv6 as [::1]:8080)"),
                )
            })?),
        };
        let mut allow = Vec::with_capacity(self.dial.allow.len());
        for (index, pattern) in self.dial.allow.iter().enumerate() {
            allow.push(regex::Regex::new(pattern).map_err(|error| {
                ConfigError::new(
                    format!("dial.allow[{index}]"),
                    format!("invalid regex: {error}"),
                )
            })?);
        }
        let ringback = match self
            .dial
            .ringback
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("us") => Ringback::Us,
            Some("eu") => Ringback::Eu,
            Some("uk") => Ringback::Uk,
            Some("none") => Ringback::None,
            Some(other) => {
                return Err(ConfigError::new(
                    "dial.ringback",
                    format!("`{other}` is not us, eu, uk or none"),
                ))
            }
        };
        let mut dns_servers = Vec::with_capacity(self.sip.dns_servers.len());
        for (index, text) in self.sip.dns_servers.iter().enumerate() {
            dns_servers.push(text.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(
                    format!("sip.dns_servers[{index}]"),
                    format!("`{text}` is not IP:PORT"),
                )
            })?);
        }
        let registrations = self.registrations(&listen)?;
        let trunks = self.outbound_trunks(&listen)?;
        Ok(ValidConfig {
            registrations,
            listen,
            tls,
            rtp_ports,
            router,
            api_listen,
            api_credentials,
            dial: DialPolicy {
                allow,
                ringback,
                trunks,
            },
            dns_servers,
            directory,
            auth: AuthSettings {
                realm,
                algorithms,
                nonce_ttl: std::time::Duration::from_secs(registrar.nonce_ttl_secs),
                max_failures: registrar.max_failures,
            },
            policy: Policy {
                min_expires: registrar.min_expires,
                max_expires: registrar.max_expires,
                // Refreshed a little before the connection would idle out,
                // whatever margin the phone keeps.
                max_expires_reliable: (self.limits.tcp_idle_timeout_secs * 9 / 10)
                    .clamp(u64::from(registrar.min_expires), u64::from(u32::MAX))
                    as u32,
                default_expires: registrar.default_expires,
                max_contacts: registrar.max_contacts,
            },
        })
    }
}

impl Config {
    fn registrations(&self, listen: &[ListenAddr]) -> Result<Vec<RegistrationSpec>, ConfigError> {
        let flows: HashSet<&str> = self.flows.iter().map(|f| f.name.as_str()).collect();
        let mut ids = HashSet::new();
        let mut specs = Vec::with_capacity(self.registrations.len());
        for (index, registration) in self.registrations.iter().enumerate() {
            let key = |rest: &str| format!("registrations[{index}].{rest}");
            let id = registration.id.trim();
            let valid_id = !id.is_empty()
                && id.len() <= 64
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !valid_id {
                return Err(ConfigError::new(
                    key("id"),
                    "must be 1-64 letters, digits, '-', '_' or '.'",
                ));
            }
            if !ids.insert(id) {
                return Err(ConfigError::new(key("id"), format!("`{id}` is used twice")));
            }
            let proxy_uri = |field: &str, text: &str| {
                let uri = SipUri::parse(&format!("sip:{}", text.trim()))
                    .map_err(|e| ConfigError::new(key(field), format!("`{text}`: {e}")))?;
                match uri.transport() {
                    None => Ok(uri),
                    Some(name) if Transport::from_name(name).is_some() => Ok(uri),
                    Some(other) => Err(ConfigError::new(
                        key(field),
                        format!("transport `{other}` is not udp, tcp or tls"),
                    )),
                }
            };
            let proxy = proxy_uri("proxy", &registration.proxy)?;
            if proxy.user.is_some() {
                return Err(ConfigError::new(
                    key("proxy"),
                    "is host[:port][;transport=…], without a user",
                ));
            }
            let outbound_proxy = match &registration.outbound_proxy {
                Some(text) => Some(proxy_uri("outbound_proxy", text)?),
                None => None,
            };
            if registration.username.trim().is_empty() {
                return Err(ConfigError::new(key("username"), "must not be empty"));
            }
            if registration.expires < 30 {
                return Err(ConfigError::new(key("expires"), "must be at least 30"));
            }
            if !flows.contains(registration.flow.as_str()) {
                return Err(ConfigError::new(
                    key("flow"),
                    format!("no flow named `{}` is defined", registration.flow),
                ));
            }
            if let Some(url) = &registration.status_callback {
                let parsed = url::Url::parse(url).map_err(|e| {
                    ConfigError::new(key("status_callback"), format!("not a URL: {e}"))
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(ConfigError::new(
                        key("status_callback"),
                        "must be http or https",
                    ));
                }
            }
            let spec = RegistrationSpec {
                id: id.to_string(),
                proxy,
                username: registration.username.trim().to_string(),
                password: registration.password.clone(),
                auth_user: registration.auth_user.clone(),
                outbound_proxy,
                expires: registration.expires,
                flow: registration.flow.clone(),
                status_callback: registration.status_callback.clone(),
            };
            let transport = spec.transport();
            if !listen.iter().any(|l| l.transport == transport) {
                return Err(ConfigError::new(
                    key("proxy"),
                    format!(
                        "registers over {transport}, but sip.listen has no {transport} address"
                    ),
                ));
            }
            specs.push(spec);
        }
        Ok(specs)
    }
}

impl Config {
    fn outbound_trunks(
        &self,
        listen: &[ListenAddr],
    ) -> Result<Vec<crate::call::trunk::OutboundTrunk>, ConfigError> {
        let mut trunks = Vec::new();
        for (index, trunk) in self.trunks.iter().enumerate() {
            if let Some(outbound) = &trunk.outbound {
                let key = format!("trunks[{index}].outbound");
                let parsed = crate::call::trunk::OutboundTrunk::new(&trunk.name, outbound)
                    .map_err(|(field, reason)| {
                        ConfigError::new(format!("{key}.{field}"), reason)
                    })?;
                if !listen.iter().any(|l| l.transport == parsed.transport) {
                    return Err(ConfigError::new(
                        format!("{key}.proxy"),
                        format!(
                            "sends over {}, but sip.listen has no {} address",
                            parsed.transport, parsed.transport
                        ),
                    ));
                }
                trunks.push(parsed);
            }
        }
        Ok(trunks)
    }

    fn api_credentials(&self) -> Result<Option<ApiCredentials>, ConfigError> {
        let usable = |key: &'static str, value: &str| {
            if value.is_empty() || value.chars().any(|c| c.is_control() || c == ':') {
                Err(ConfigError::new(
                    key,
                    "must be non-empty, without `:` or control characters",
                ))
            } else {
                Ok(())
            }
        };
        match (&self.api.account_sid, &self.api.auth_token) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(ConfigError::new(
                "api.auth_token",
                "is required with api.account_sid",
            )),
            (None, Some(_)) => Err(ConfigError::new(
                "api.account_sid",
                "is required with api.auth_token",
            )),
            (Some(account_sid), Some(auth_token)) => {
                usable("api.account_sid", account_sid)?;
                usable("api.auth_token", auth_token)?;
                if auth_token.len() < 16 {
                    return Err(ConfigError::new(
                        "api.auth_token",
                        "is shorter than 16 characters: too easy to guess for a key that places calls",
                    ));
                }
                Ok(Some(ApiCredentials {
                    account_sid: account_sid.clone(),
                    auth_token: auth_token.clone(),
                }))
            }
        }
    }
}

/// The parts of a [`Config`] that had to be parsed further.
#[derive(Debug)]
pub struct ValidConfig {
    pub listen: Vec<ListenAddr>,
    /// `[sip.tls]`'s certificates and trust, loaded.
    pub tls: std::sync::Arc<crate::transport::tls::TlsMaterial>,
    pub rtp_ports: RangeInclusive<u16>,
    pub router: Router,
    /// Where the HTTP API listens, when it is on.
    pub api_listen: Option<SocketAddr>,
    /// The Calls API's login, when it is on.
    pub api_credentials: Option<ApiCredentials>,
    pub dial: DialPolicy,
    pub dns_servers: Vec<SocketAddr>,
    /// Users and trunk logins with their secrets.
    pub directory: Directory,
    pub registrations: Vec<RegistrationSpec>,
    pub auth: AuthSettings,
    pub policy: Policy,
}

fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let (low, high) = text
        .split_once('-')
        .ok_or_else(|| format!("`{text}` is not LOW-HIGH"))?;
    let low: u16 = low
        .trim()
        .parse()
        .map_err(|_| format!("`{low}` is not a port number"))?;
    let high: u16 = high
        .trim()
        .parse()
        .map_err(|_| format!("`{high}` is not a port number"))?;
    if low == 0 || low > high {
        return Err(format!("`{text}` must be LOW-HIGH with 0 < LOW <= HIGH"));
    }
    if high - low < 1 {
        return Err(format!(
            "`{text}` needs at least two ports (RTP uses even ports)"
        ));
    }
    Ok(low..=high)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
