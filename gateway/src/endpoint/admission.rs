//! Who may place a call, and where it goes. A trunk recognised by its
//! source address (without credentials) routes by its rules. Everyone else
//! must authenticate (407): a registered user's call goes to the user's
//! flow, to another user it dials, or by `[registrar] routes`; a trunk that
//! logs in routes by its rules. A source that is neither never reaches a
//! flow.

use std::time::Instant;

use super::{reply, Core, Endpoint};
use crate::routing::{Destination, RouteMatch};
use crate::sip::authenticator::Verdict;
use crate::sip::message::Request;
use crate::sip::response::{new_tag, response_for};
use crate::sip::transaction::{Peer, ServerTxId};

impl Endpoint {
    /// The route of an INVITE, or `None` when it was answered here (a
    /// challenge or a refusal, each with one log line).
    pub(super) fn authorize(
        &self,
        core: &mut Core,
        tx: ServerTxId,
        request: &Request,
        peer: Peer,
    ) -> Option<RouteMatch> {
        let call_id = request.call_id().unwrap_or_default();
        let dialed = request.uri.user_decoded().unwrap_or_default();
        let ip = peer.addr.ip();
        let refuse = |core: &mut Core, status: u16, why: &str| {
            tracing::warn!(%call_id, peer = %peer.addr, %dialed, status, "call rejected: {why}");
            crate::metrics::call_rejected(status);
            reply(&mut core.layer, tx, request, status, None);
        };
        // A PBX we are registered to, calling the extension we registered.
        // Its Request-URI is our contact; the number the caller dialed is in
        // To (a PBX's own extension, or a DID it forwarded).
        if let Some(entry) = self.registry.for_incoming(&dialed, ip) {
            let number = request
                .to()
                .ok()
                .and_then(|to| to.uri.user_decoded())
                .unwrap_or_else(|| entry.spec.username.clone());
            return Some(RouteMatch {
                source: format!("registration:{}", entry.spec.id),
                destination: Destination::Flow(entry.spec.flow.clone()),
                number,
            });
        }
        let client_cert = self.transports.client_certificate(peer);
        let client_cert = client_cert.as_deref();
        let certificate_refused = |core: &mut Core, trunk: &crate::routing::Trunk| {
            let why = match client_cert {
                None => format!(
                    "trunk `{}` requires a TLS client certificate and the {} connection presented none",
                    trunk.name, peer.transport
                ),
                Some(_) => format!(
                    "trunk `{}`: the TLS client certificate is not valid for any of its tls_client_names",
                    trunk.name
                ),
            };
            refuse(core, 403, &why);
        };
        if let Some(trunk) = self.router.trunk_for(ip, client_cert) {
            if !trunk.accepts_certificate(client_cert) {
                certificate_refused(core, trunk);
                return None;
            }
            if trunk.auth.is_none() {
                return match self.router.route_trunk(trunk, &dialed) {
                    Ok(route) => Some(route),
                    Err(error) => {
                        refuse(core, error.status(), &error.to_string());
                        None
                    }
                };
            }
        }
        let logins_possible = self.directory.has_users() || self.router.any_trunk_login_from(ip);
        if !logins_possible {
            let why = if self.router.any_certificate_trunk() && client_cert.is_none() {
                format!("source {ip} is not allowed by any trunk and presented no TLS client certificate")
            } else {
                format!("source {ip} is not allowed by any trunk")
            };
            refuse(core, 403, &why);
            return None;
        }
        let now = Instant::now();
        let verdict = match request.headers.get("Proxy-Authorization") {
            None => Verdict::Challenge {
                stale: false,
                reason: "no credentials",
            },
            Some(header) => {
                let directory = &self.directory;
                self.auth.lock().unwrap().verify(
                    header,
                    "INVITE",
                    ip,
                    |name| directory.secret(name),
                    now,
                )
            }
        };
        let name = match verdict {
            Verdict::Authenticated(name) => name,
            Verdict::Challenge { stale, reason } => {
                if reason != "no credentials" {
                    tracing::info!(%call_id, peer = %peer.addr, %reason, "INVITE not authenticated: 407");
                }
                let mut response = response_for(
                    request,
                    407,
                    "Proxy Authentication Required",
                    Some(&new_tag()),
                );
                for challenge in self.auth.lock().unwrap().challenges(stale, now) {
                    response.headers.push("Proxy-Authenticate", &challenge);
                }
                // A 407 keeps its INVITE transaction for the ACK (Timer
                // H/I), as every non-2xx final must.
                core.layer.send_response(tx, response, now);
                return None;
            }
            Verdict::Throttled => {
                // The authenticator logged once when the source or name
                // crossed the limit; a line per refused attempt would let a
                // brute-force run flood the log.
                tracing::debug!(%call_id, peer = %peer.addr, "call rejected: too many failed authentications");
                crate::metrics::auth_failed("throttled");
                crate::metrics::call_rejected(403);
                reply(&mut core.layer, tx, request, 403, None);
                return None;
            }
        };
        if let Some(trunk) = self.router.trunk_with_login(&name, ip) {
            if !trunk.accepts_certificate(client_cert) {
                certificate_refused(core, trunk);
                return None;
            }
            return match self.router.route_trunk(trunk, &dialed) {
                Ok(route) => Some(route),
                Err(error) => {
                    refuse(core, error.status(), &error.to_string());
                    None
                }
            };
        }
        let Some(user) = self.directory.user(&name) else {
            refuse(
                core,
                403,
                &format!("login {name:?} is not allowed from {ip}"),
            );
            return None;
        };
        // A call to another of our users rings that user's phones.
        let to_our_domain = self
            .registrar
            .as_ref()
            .is_some_and(|r| r.serves(&request.uri.host.to_string()));
        if to_our_domain && self.directory.user(&dialed).is_some() {
            return Some(RouteMatch {
                source: format!("user:{name}"),
                destination: Destination::User(dialed.clone()),
                number: dialed,
            });
        }
        if let Some(flow) = &user.flow {
            return Some(RouteMatch {
                source: format!("user:{name}"),
                destination: Destination::Flow(flow.clone()),
                number: crate::routing::dialed_number(&dialed).to_string(),
            });
        }
        match self.router.route_user(&name, &dialed) {
            Ok(route) => Some(route),
            Err(error) => {
                refuse(core, error.status(), &error.to_string());
                None
            }
        }
    }
}
