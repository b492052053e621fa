//! Dialog state (RFC 3261 §12): identifiers, route set, remote target and
//! CSeq spaces, and building requests inside the dialog.

use super::message::{Method, Request, Response};
use super::response::new_branch;
use super::uri::{NameAddr, SipUri};
use super::SipError;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogState {
    Early,
    Confirmed,
    Terminated,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    #[error("CSeq {got} is not above the last one seen ({last})")]
    CSeqOutOfOrder { got: u32, last: u32 },
    #[error("request does not belong to this dialog")]
    NotThisDialog,
    #[error("{0}")]
    Malformed(#[from] SipError),
}

#[derive(Clone, Debug)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    pub local_uri: NameAddr,
    pub remote_uri: NameAddr,
    pub remote_target: SipUri,
    /// Route set in the order our requests must traverse it.
    pub route_set: Vec<String>,
    pub local_cseq: u32,
    pub remote_cseq: Option<u32>,
    pub state: DialogState,
}

impl Dialog {
    /// The dialog our 2xx to `invite` creates (§12.1.1).
    pub fn new_uas(invite: &Request, local_tag: String) -> Result<Dialog, SipError> {
        let from = invite.from()?;
        let mut to = invite.to()?;
        to.set_tag(&local_tag);
        let remote_target = invite
            .contact()
            .map(|contact| contact.uri)
            .ok_or_else(|| SipError::new("INVITE without a usable Contact"))?;
        Ok(Dialog {
            call_id: invite.call_id()?.to_string(),
            local_tag,
            remote_tag: from.tag().unwrap_or_default().to_string(),
            local_uri: to,
            remote_uri: from,
            remote_target,
            route_set: invite
                .headers
                .get_all_split("Record-Route")
                .into_iter()
                .map(str::to_string)
                .collect(),
            local_cseq: 1,
            remote_cseq: Some(invite.cseq()?.0),
            state: DialogState::Confirmed,
        })
    }

    /// The dialog a 2xx to our `invite` creates (§12.1.2).
    pub fn new_uac(invite: &Request, response: &Response) -> Result<Dialog, SipError> {
        let from = invite.from()?;
        let to = response.to()?;
        let remote_target = response
            .contact()
            .map(|contact| contact.uri)
            .ok_or_else(|| SipError::new("2xx without a usable Contact"))?;
        let mut route_set: Vec<String> = response
            .headers
            .get_all_split("Record-Route")
            .into_iter()
            .map(str::to_string)
            .collect();
        route_set.reverse();
        Ok(Dialog {
            call_id: invite.call_id()?.to_string(),
            local_tag: from.tag().unwrap_or_default().to_string(),
            remote_tag: to.tag().unwrap_or_default().to_string(),
            local_uri: from,
            remote_uri: to,
            remote_target,
            route_set,
            local_cseq: invite.cseq()?.0,
            remote_cseq: None,
            state: if response.status < 300 {
                DialogState::Confirmed
            } else {
                DialogState::Early
            },
        })
    }

    pub fn id(&self) -> DialogId {
        DialogId {
            call_id: self.call_id.clone(),
            local_tag: self.local_tag.clone(),
            remote_tag: self.remote_tag.clone(),
        }
    }

    /// Whether `request` is inside this dialog (Call-ID and both tags).
    pub fn matches(&self, request: &Request) -> bool {
        let call_id = request
            .call_id()
            .map(|id| id == self.call_id)
            .unwrap_or(false);
        let to_tag = request
            .to()
            .ok()
            .and_then(|to| to.tag().map(str::to_string));
        let from_tag = request
            .from()
            .ok()
            .and_then(|from| from.tag().map(str::to_string));
        call_id
            && to_tag.as_deref() == Some(&self.local_tag)
            && from_tag.as_deref() == Some(&self.remote_tag)
    }

    /// Checks an in-dialog request and updates the dialog from it (§12.2.2).
    pub fn handle_request(&mut self, request: &Request) -> Result<(), DialogError> {
        if !self.matches(request) {
            return Err(DialogError::NotThisDialog);
        }
        let (cseq, _) = request.cseq()?;
        if request.method != Method::Ack && request.method != Method::Cancel {
            if let Some(last) = self.remote_cseq {
                if cseq < last || (cseq == last && request.method != Method::Invite) {
                    return Err(DialogError::CSeqOutOfOrder { got: cseq, last });
                }
            }
            self.remote_cseq = Some(cseq);
        }
        if matches!(request.method, Method::Invite | Method::Update) {
            if let Some(contact) = request.contact() {
                self.remote_target = contact.uri;
            }
        }
        if request.method == Method::Bye {
            self.state = DialogState::Terminated;
        }
        Ok(())
    }

    /// A new request in this dialog (§12.2.1.1). `sent_by` is our
    /// `host:port` for the Via, `transport` its protocol (UDP/TCP).
    pub fn create_request(
        &mut self,
        method: Method,
        sent_by: &str,
        transport: &str,
        local_contact: &SipUri,
    ) -> Request {
        if method != Method::Ack && method != Method::Cancel {
            self.local_cseq += 1;
        }
        let strict = self
            .route_set
            .first()
            .and_then(|route| NameAddr::parse(route).ok())
            .is_some_and(|route| route.uri.param("lr").is_none());
        let (uri, routes) = if strict {
            // Strict routing (RFC 2543): the first route becomes the
            // Request-URI and the remote target goes last.
            let first = NameAddr::parse(&self.route_set[0])
                .map(|r| r.uri)
                .unwrap_or_else(|_| self.remote_target.clone());
            let mut routes: Vec<String> = self.route_set[1..].to_vec();
            routes.push(format!("<{}>", self.remote_target));
            (first, routes)
        } else {
            (self.remote_target.clone(), self.route_set.clone())
        };
        let mut request = Request {
            method: method.clone(),
            uri,
            headers: Default::default(),
            body: Vec::new(),
        };
        request.headers.push(
            "Via",
            &format!(
                "SIP/2.0/{} {sent_by};branch={};rport",
                transport.to_ascii_uppercase(),
                new_branch()
            ),
        );
        request.headers.push("Max-Forwards", "70");
        for route in routes {
            request.headers.push("Route", &route);
        }
        request.headers.push("From", &self.local_uri.to_string());
        request.headers.push("To", &self.remote_uri.to_string());
        request.headers.push("Call-ID", &self.call_id);
        request
            .headers
            .push("CSeq", &format!("{} {method}", self.local_cseq));
        request
            .headers
            .push("Contact", &format!("<{local_contact}>"));
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::framing::parse_message;
    use crate::sip::message::SipMessage;

    fn invite() -> Request {
        let text = "INVITE sip:100@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKa\r\nRecord-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\nFrom: \"A\" <sip:alice@example.com>;tag=from1\r\nTo: <sip:100@10.0.0.1>\r\nCall-ID: dlg-1\r\nCSeq: 10 INVITE\r\nContact: <sip:alice@10.0.0.9:5060>\r\nContent-Length: 0\r\n\r\n";
        match parse_message(text.as_bytes()).unwrap() {
            SipMessage::Request(request) => request,
            _ => unreachable!(),
        }
    }

    #[test]
    fn uas_bye_reverses_tags_and_follows_the_route_set() {
        let mut dialog = Dialog::new_uas(&invite(), "ours".into()).unwrap();
        let contact = SipUri::parse("sip:switchboard@10.0.0.1:5060").unwrap();
        let bye = dialog.create_request(Method::Bye, "10.0.0.1:5060", "udp", &contact);
        assert_eq!(bye.uri.to_string(), "sip:alice@10.0.0.9:5060");
        assert_eq!(
            bye.headers.get_all("Route").collect::<Vec<_>>(),
            vec!["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(bye.from().unwrap().tag(), Some("ours"));
        assert_eq!(bye.to().unwrap().tag(), Some("from1"));
        assert_eq!(bye.cseq().unwrap(), (2, Method::Bye));
        let via = bye.top_via().unwrap();
        assert_eq!(via.sent_by(), "10.0.0.1:5060");
        assert!(via.branch().unwrap().starts_with("z9hG4bK"));
        assert!(parse_message(&bye.to_bytes()).is_ok());
    }

    #[test]
    fn cseq_must_increase_and_reinvite_updates_target() {
        let mut dialog = Dialog::new_uas(&invite(), "ours".into()).unwrap();
        let mut reinvite = invite();
        reinvite.headers.set("To", "<sip:100@10.0.0.1>;tag=ours");
        reinvite.headers.set("CSeq", "11 INVITE");
        reinvite
            .headers
            .set("Contact", "<sip:alice@10.0.0.77:5060>");
        dialog.handle_request(&reinvite).unwrap();
        assert_eq!(dialog.remote_target.to_string(), "sip:alice@10.0.0.77:5060");
        let mut old = reinvite.clone();
        old.headers.set("CSeq", "5 INVITE");
        assert!(matches!(
            dialog.handle_request(&old),
            Err(DialogError::CSeqOutOfOrder { .. })
        ));
        let mut stranger = reinvite;
        stranger.headers.set("To", "<sip:100@10.0.0.1>;tag=other");
        assert_eq!(
            dialog.handle_request(&stranger),
            Err(DialogError::NotThisDialog)
        );
    }
}
