//! Which flow an incoming call goes to: the trunk whose allow-list holds the
//! source address (or, over TLS, whose client names the certificate
//! proves), then the first of its routes whose pattern matches the dialed
//! number.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::config::{ConfigError, RouteConfig, TrunkConfig};
use crate::transport::tls::certificate_names_one_of;

/// Why a call could not be routed; each maps to one SIP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No trunk allows this source address: 403.
    #[error("source {0} is not allowed by any trunk")]
    SourceNotAllowed(IpAddr),
    /// The source is known but no route matches: 404.
    #[error("no route on `{from}` matches `{number}`")]
    NoRoute { from: String, number: String },
}

impl RouteError {
    pub fn status(&self) -> u16 {
        match self {
            RouteError::SourceNotAllowed(_) => 403,
            RouteError::NoRoute { .. } => 404,
        }
    }
}

/// Where a routed call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A flow: a bot, a webhook…
    Flow(String),
    /// A registered user: every phone of theirs rings.
    User(String),
}

/// Where a call goes, and who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// The trunk's name, or `user:NAME` for a registered user's call.
    pub source: String,
    pub destination: Destination,
    /// The dialed number the patterns were matched against.
    pub number: String,
}

/// The trunk a call came from, once known (by address or by credentials).
#[derive(Debug)]
pub struct Trunk {
    pub name: String,
    allow: Vec<IpNet>,
    /// Digest username and password calls from it must present.
    pub auth: Option<(String, String)>,
    routes: Vec<(Regex, Destination)>,
    /// Names a TLS client certificate must be valid for (one of them);
    /// empty when the trunk does not require one.
    tls_client_names: Vec<ServerName<'static>>,
}

impl Trunk {
    /// Whether a call over a connection that presented `cert` (verified
    /// against `sip.tls.client_ca`) satisfies this trunk's TLS requirement.
    pub fn accepts_certificate(&self, cert: Option<&CertificateDer<'_>>) -> bool {
        self.tls_client_names.is_empty()
            || cert.is_some_and(|cert| certificate_names_one_of(cert, &self.tls_client_names))
    }

    pub fn requires_certificate(&self) -> bool {
        !self.tls_client_names.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct Router {
    trunks: Vec<Trunk>,
    /// Routes for registered users' calls (`[registrar] routes`).
    user_routes: Vec<(Regex, Destination)>,
}

/// Compiles `routes` (under config key `key`), checking their targets.
pub fn compile_routes(
    routes: &[RouteConfig],
    key: &dyn Fn(&str) -> String,
    flows: &HashSet<&str>,
    users: &HashSet<&str>,
) -> Result<Vec<(Regex, Destination)>, ConfigError> {
    let mut compiled = Vec::with_capacity(routes.len());
    for (position, route) in routes.iter().enumerate() {
        let regex = Regex::new(&route.pattern).map_err(|error| {
            ConfigError::new(
                key(&format!("routes[{position}].pattern")),
                format!("invalid regex: {error}"),
            )
        })?;
        let destination = match (&route.flow, &route.user) {
            (Some(flow), None) => {
                if !flows.contains(flow.as_str()) {
                    return Err(ConfigError::new(
                        key(&format!("routes[{position}].flow")),
                        format!("no flow named `{flow}` is defined"),
                    ));
                }
                Destination::Flow(flow.clone())
            }
            (None, Some(user)) => {
                if !users.contains(user.as_str()) {
                    return Err(ConfigError::new(
                        key(&format!("routes[{position}].user")),
                        format!("no user named `{user}` is defined"),
                    ));
                }
                Destination::User(user.clone())
            }
            _ => {
                return Err(ConfigError::new(
                    key(&format!("routes[{position}]")),
                    "needs exactly one of flow or user",
                ))
            }
        };
        compiled.push((regex, destination));
    }
    Ok(compiled)
}

impl Router {
    /// Compiles every trunk and the users' routes; `flows` and `users` are
    /// the names routes may point at.
    pub fn new(
        trunks: &[TrunkConfig],
        user_routes: &[RouteConfig],
        flows: &HashSet<&str>,
        users: &HashSet<&str>,
    ) -> Result<Router, ConfigError> {
        let mut compiled = Vec::with_capacity(trunks.len());
        for (index, trunk) in trunks.iter().enumerate() {
            let key = |rest: &str| format!("trunks[{index}].{rest}");
            if trunk.name.trim().is_empty() {
                return Err(ConfigError::new(key("name"), "must not be empty"));
            }
            if trunk.allow.is_empty() && trunk.auth.is_none() && trunk.tls_client_names.is_empty() {
                return Err(ConfigError::new(
                    key("allow"),
                    "lists no address and the trunk has neither auth nor tls_client_names: it could never receive a call",
                ));
            }
            let mut tls_client_names = Vec::with_capacity(trunk.tls_client_names.len());
            for (position, name) in trunk.tls_client_names.iter().enumerate() {
                tls_client_names.push(ServerName::try_from(name.clone()).map_err(|_| {
                    ConfigError::new(
                        key(&format!("tls_client_names[{position}]")),
                        format!("`{name}` is not a host name or IP address"),
                    )
                })?);
            }
            if let Some(auth) = &trunk.auth {
                if auth.username.trim().is_empty() || auth.password.is_empty() {
                    return Err(ConfigError::new(
                        key("auth"),
                        "needs a username and a password",
                    ));
                }
            }
            let mut allow = Vec::with_capacity(trunk.allow.len());
            for (position, entry) in trunk.allow.iter().enumerate() {
                allow.push(parse_net(entry).map_err(|reason| {
                    ConfigError::new(key(&format!("allow[{position}]")), reason)
                })?);
            }
            let routes = compile_routes(&trunk.routes, &key, flows, users)?;
            compiled.push(Trunk {
                name: trunk.name.clone(),
                allow,
                auth: trunk
                    .auth
                    .as_ref()
                    .map(|a| (a.username.clone(), a.password.clone())),
                routes,
                tls_client_names,
            });
        }
        let user_routes = compile_routes(
            user_routes,
            &|rest| format!("registrar.{rest}"),
            flows,
            users,
        )?;
        Ok(Router {
            trunks: compiled,
            user_routes,
        })
    }

    /// Every trunk's allowed networks: sources trusted to send calls at a
    /// carrier's rate.
    pub fn trusted_networks(&self) -> Vec<IpNet> {
        self.trunks
            .iter()
            .flat_map(|trunk| trunk.allow.iter().copied())
            .collect()
    }

    /// The first trunk whose allow-list holds `source`, or that has none
    /// and takes calls by the client certificate `cert` names.
    pub fn trunk_for(&self, source: IpAddr, cert: Option<&CertificateDer<'_>>) -> Option<&Trunk> {
        let source = canonical(source);
        self.trunks.iter().find(|trunk| {
            trunk.allow.iter().any(|net| net.contains(&source))
                || (trunk.allow.is_empty()
                    && trunk.auth.is_none()
                    && trunk.requires_certificate()
                    && trunk.accepts_certificate(cert))
        })
    }

    /// Whether some trunk is recognised by client certificates alone.
    pub fn any_certificate_trunk(&self) -> bool {
        self.trunks
            .iter()
            .any(|t| t.allow.is_empty() && t.auth.is_none() && t.requires_certificate())
    }

    /// The trunk whose credentials name `username`, usable from `source`
    /// (its allow-list holds it, or it has none).
    pub fn trunk_with_login(&self, username: &str, source: IpAddr) -> Option<&Trunk> {
        let source = canonical(source);
        self.trunks.iter().find(|trunk| {
            trunk
                .auth
                .as_ref()
                .is_some_and(|(user, _)| user == username)
                && (trunk.allow.is_empty() || trunk.allow.iter().any(|net| net.contains(&source)))
        })
    }

    /// Whether some trunk takes calls by credentials from `source`.
    pub fn any_trunk_login_from(&self, source: IpAddr) -> bool {
        let source = canonical(source);
        self.trunks.iter().any(|trunk| {
            trunk.auth.is_some()
                && (trunk.allow.is_empty() || trunk.allow.iter().any(|net| net.contains(&source)))
        })
    }

    /// Routes `dialed` by `trunk`'s rules.
    pub fn route_trunk(&self, trunk: &Trunk, dialed: &str) -> Result<RouteMatch, RouteError> {
        let number = dialed_number(dialed);
        match trunk.routes.iter().find(|(re, _)| re.is_match(number)) {
            Some((_, destination)) => Ok(RouteMatch {
                source: trunk.name.clone(),
                destination: destination.clone(),
                number: number.to_string(),
            }),
            None => Err(RouteError::NoRoute {
                from: trunk.name.clone(),
                number: number.to_string(),
            }),
        }
    }

    /// Routes `dialed` for a registered user's call by `[registrar] routes`.
    pub fn route_user(&self, username: &str, dialed: &str) -> Result<RouteMatch, RouteError> {
        let number = dialed_number(dialed);
        let source = format!("user:{username}");
        match self.user_routes.iter().find(|(re, _)| re.is_match(number)) {
            Some((_, destination)) => Ok(RouteMatch {
                source,
                destination: destination.clone(),
                number: number.to_string(),
            }),
            None => Err(RouteError::NoRoute {
                from: source,
                number: number.to_string(),
            }),
        }
    }

    /// Routes a call from `source` to the Request-URI user part `dialed`
    /// by address alone (trunks without credentials).
    pub fn route(&self, source: IpAddr, dialed: &str) -> Result<RouteMatch, RouteError> {
        let canonical_source = canonical(source);
        let mut first_trunk = None;
        for trunk in self.trunks.iter().filter(|trunk| {
            trunk
                .allow
                .iter()
                .any(|net| net.contains(&canonical_source))
        }) {
            first_trunk.get_or_insert(trunk);
            if let Ok(found) = self.route_trunk(trunk, dialed) {
                return Ok(found);
            }
        }
        match first_trunk {
            Some(trunk) => Err(RouteError::NoRoute {
                from: trunk.name.clone(),
                number: dialed_number(dialed).to_string(),
            }),
            None => Err(RouteError::SourceNotAllowed(canonical_source)),
        }
    }
}

/// Carriers that front several applications dial `app#account#dest`; the
/// number to route on is the last piece.
pub fn dialed_number(user: &str) -> &str {
    user.rsplit('#').next().unwrap_or(user)
}

/// IPv4 peers reaching a dual-stack socket show up as `::ffff:a.b.c.d`.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn parse_net(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    if let Ok(net) = entry.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    entry
        .parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{entry}` is neither an IP address nor a CIDR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(name: &str, allow: &[&str], routes: &[(&str, &str)]) -> TrunkConfig {
        TrunkConfig {
            name: name.into(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            auth: None,
            outbound: None,
            tls_client_names: Vec::new(),
            routes: routes
                .iter()
                .map(|(pattern, flow)| RouteConfig {
                    pattern: pattern.to_string(),
                    flow: Some(flow.to_string()),
                    user: None,
                })
                .collect(),
        }
    }

    fn router(trunks: &[TrunkConfig]) -> Router {
        let flows: HashSet<&str> = ["sales", "support", "echo"].into_iter().collect();
        Router::new(trunks, &[], &flows, &HashSet::new()).unwrap()
    }

    #[test]
    fn first_matching_route_wins_in_order() {
        let router = router(&[trunk(
            "carrier",
            &["198.51.100.0/24"],
            &[
                (r"^\+1800\d+$", "sales"),
                (r"^\+1\d{10}$", "support"),
                (".*", "echo"),
            ],
        )]);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            router.route(ip, "+18005551234").unwrap().destination,
            Destination::Flow("sales".into())
        );
        assert_eq!(
            router.route(ip, "+12125551234").unwrap().destination,
            Destination::Flow("support".into())
        );
        assert_eq!(
            router.route(ip, "alice").unwrap().destination,
            Destination::Flow("echo".into())
        );
    }

    #[test]
    fn unknown_source_is_forbidden_and_unmatched_number_not_found() {
        let router = router(&[trunk("carrier", &["10.0.0.1"], &[(r"^1\d+$", "sales")])]);
        let stranger: IpAddr = "10.0.0.2".parse().unwrap();
        let error = router.route(stranger, "100").unwrap_err();
        assert_eq!(error.status(), 403);
        let known: IpAddr = "10.0.0.1".parse().unwrap();
        let error = router.route(known, "200").unwrap_err();
        assert_eq!(error.status(), 404);
    }

    #[test]
    fn hash_separated_user_routes_on_the_destination() {
        assert_eq!(dialed_number("app#acct42#+4930123"), "+4930123");
        assert_eq!(dialed_number("+4930123"), "+4930123");
        let router = router(&[trunk("carrier", &["10.0.0.0/8"], &[(r"^\+49", "support")])]);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            router.route(ip, "app#acct#+4930123").unwrap().number,
            "+4930123"
        );
    }

    #[test]
    fn ipv6_and_mapped_ipv4_sources() {
        let router = router(&[
            trunk("v6", &["2001:db8::/32"], &[(".*", "support")]),
            trunk("v4", &["192.0.2.10"], &[(".*", "sales")]),
        ]);
        assert_eq!(
            router
                .route("2001:db8::5".parse().unwrap(), "1")
                .unwrap()
                .source,
            "v6"
        );
        assert_eq!(
            router
                .route("::ffff:192.0.2.10".parse().unwrap(), "1")
                .unwrap()
                .source,
            "v4"
        );
    }

    #[test]
    fn falls_through_to_a_later_trunk_allowing_the_same_source() {
        let router = router(&[
            trunk("a", &["10.0.0.0/8"], &[(r"^9", "sales")]),
            trunk("b", &["10.0.0.0/8"], &[(r"^1", "support")]),
        ]);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(router.route(ip, "123").unwrap().source, "b");
    }

    #[test]
    fn bad_entries_are_named() {
        let flows: HashSet<&str> = ["echo"].into_iter().collect();
        let users = HashSet::new();
        let error =
            Router::new(&[trunk("x", &["10.0.0.300"], &[])], &[], &flows, &users).unwrap_err();
        assert_eq!(error.key, "trunks[0].allow[0]");
        let error = Router::new(
            &[trunk("x", &["10.0.0.1"], &[("(", "echo")])],
            &[],
            &flows,
            &users,
        )
        .unwrap_err();
        assert_eq!(error.key, "trunks[0].routes[0].pattern");
        let mut no_way_in = trunk("x", &[], &[]);
        no_way_in.allow.clear();
        let error = Router::new(&[no_way_in], &[], &flows, &users).unwrap_err();
        assert_eq!(error.key, "trunks[0].allow");
    }

    #[test]
    fn trunks_by_login_and_routes_to_users() {
        let flows: HashSet<&str> = ["echo"].into_iter().collect();
        let users: HashSet<&str> = ["bob"].into_iter().collect();
        let mut carrier = trunk("carrier", &[], &[]);
        carrier.auth = Some(crate::config::TrunkAuth {
            username: "acme".into(),
            password: "pw".into(),
        });
        carrier.routes.push(RouteConfig {
            pattern: "^\\+1555".into(),
            flow: None,
            user: Some("bob".into()),
        });
        let user_routes = [RouteConfig {
            pattern: ".*".into(),
            flow: Some("echo".into()),
            user: None,
        }];
        let router = Router::new(&[carrier], &user_routes, &flows, &users).unwrap();
        let anywhere: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(router.trunk_for(anywhere, None).is_none());
        assert!(router.any_trunk_login_from(anywhere));
        let trunk = router.trunk_with_login("acme", anywhere).unwrap();
        assert!(router.trunk_with_login("other", anywhere).is_none());
        assert_eq!(
            router.route_trunk(trunk, "+15550100").unwrap().destination,
            Destination::User("bob".into())
        );
        let route = router.route_user("alice", "100").unwrap();
        assert_eq!(route.source, "user:alice");
        assert_eq!(route.destination, Destination::Flow("echo".into()));
    }
}
