//! Which flow an incoming call goes to: the trunk whose allow-list holds the
//! source address, then the first of its routes whose pattern matches the
//! dialed number.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;

use crate::config::{ConfigError, TrunkConfig};

/// Why a call could not be routed; each maps to one SIP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No trunk allows this source address: 403.
    #[error("source {0} is not allowed by any trunk")]
    SourceNotAllowed(IpAddr),
    /// The source is a known trunk but no route matches: 404.
    #[error("no route on trunk `{trunk}` matches `{number}`")]
    NoRoute { trunk: String, number: String },
}

impl RouteError {
    pub fn status(&self) -> u16 {
        match self {
            RouteError::SourceNotAllowed(_) => 403,
            RouteError::NoRoute { .. } => 404,
        }
    }
}

/// Where a call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub trunk: String,
    pub flow: String,
    /// The dialed number the patterns were matched against.
    pub number: String,
}

#[derive(Debug)]
struct Trunk {
    name: String,
    allow: Vec<IpNet>,
    routes: Vec<(Regex, String)>,
}

#[derive(Debug)]
pub struct Router {
    trunks: Vec<Trunk>,
}

impl Router {
    /// Compiles every trunk; `flows` are the names routes may point at.
    pub fn new(trunks: &[TrunkConfig], flows: &HashSet<&str>) -> Result<Router, ConfigError> {
        let mut compiled = Vec::with_capacity(trunks.len());
        for (index, trunk) in trunks.iter().enumerate() {
            let key = |rest: &str| format!("trunks[{index}].{rest}");
            if trunk.name.trim().is_empty() {
                return Err(ConfigError::new(key("name"), "must not be empty"));
            }
            if trunk.allow.is_empty() {
                return Err(ConfigError::new(
                    key("allow"),
                    "lists no address: the trunk could never receive a call",
                ));
            }
            let mut allow = Vec::with_capacity(trunk.allow.len());
            for (position, entry) in trunk.allow.iter().enumerate() {
                allow.push(parse_net(entry).map_err(|reason| {
                    ConfigError::new(key(&format!("allow[{position}]")), reason)
                })?);
            }
            let mut routes = Vec::with_capacity(trunk.routes.len());
            for (position, route) in trunk.routes.iter().enumerate() {
                let regex = Regex::new(&route.pattern).map_err(|error| {
                    ConfigError::new(
                        key(&format!("routes[{position}].pattern")),
                        format!("invalid regex: {error}"),
                    )
                })?;
                if !flows.contains(route.flow.as_str()) {
                    return Err(ConfigError::new(
                        key(&format!("routes[{position}].flow")),
                        format!("no flow named `{}` is defined", route.flow),
                    ));
                }
                routes.push((regex, route.flow.clone()));
            }
            compiled.push(Trunk {
                name: trunk.name.clone(),
                allow,
                routes,
            });
        }
        Ok(Router { trunks: compiled })
    }

    /// Routes a call from `source` to the Request-URI user part `dialed`.
    pub fn route(&self, source: IpAddr, dialed: &str) -> Result<RouteMatch, RouteError> {
        let source = canonical(source);
        let number = dialed_number(dialed);
        let mut first_trunk = None;
        for trunk in self
            .trunks
            .iter()
            .filter(|trunk| trunk.allow.iter().any(|net| net.contains(&source)))
        {
            first_trunk.get_or_insert(trunk);
            if let Some((_, flow)) = trunk.routes.iter().find(|(re, _)| re.is_match(number)) {
                return Ok(RouteMatch {
                    trunk: trunk.name.clone(),
                    flow: flow.clone(),
                    number: number.to_string(),
                });
            }
        }
        match first_trunk {
            Some(trunk) => Err(RouteError::NoRoute {
                trunk: trunk.name.clone(),
                number: number.to_string(),
            }),
            None => Err(RouteError::SourceNotAllowed(source)),
        }
    }
}

/// Carriers that front several applications dial `app#account#dest`; the
/// number to route on is the last piece.
pub fn dialed_number(user: &str) -> &str {
    user.rsplit('#').next().unwrap_or(user)
}

/// IPv4 peers reaching a dual-stack socket show up as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
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
    use crate::config::RouteConfig;

    fn trunk(name: &str, allow: &[&str], routes: &[(&str, &str)]) -> TrunkConfig {
        TrunkConfig {
            name: name.into(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            routes: routes
                .iter()
                .map(|(pattern, flow)| RouteConfig {
                    pattern: pattern.to_string(),
                    flow: flow.to_string(),
                })
                .collect(),
        }
    }

    fn router(trunks: &[TrunkConfig]) -> Router {
        let flows: HashSet<&str> = ["sales", "support", "echo"].into_iter().collect();
        Router::new(trunks, &flows).unwrap()
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
        assert_eq!(router.route(ip, "+18005551234").unwrap().flow, "sales");
        assert_eq!(router.route(ip, "+12125551234").unwrap().flow, "support");
        assert_eq!(router.route(ip, "alice").unwrap().flow, "echo");
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
                .trunk,
            "v6"
        );
        assert_eq!(
            router
                .route("::ffff:192.0.2.10".parse().unwrap(), "1")
                .unwrap()
                .trunk,
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
        assert_eq!(router.route(ip, "123").unwrap().trunk, "b");
    }

    #[test]
    fn bad_entries_are_named() {
        let flows: HashSet<&str> = ["echo"].into_iter().collect();
        let error = Router::new(&[trunk("x", &["10.0.0.300"], &[])], &flows).unwrap_err();
        assert_eq!(error.key, "trunks[0].allow[0]");
        let error =
            Router::new(&[trunk("x", &["10.0.0.1"], &[("(", "echo")])], &flows).unwrap_err();
        assert_eq!(error.key, "trunks[0].routes[0].pattern");
    }
}
