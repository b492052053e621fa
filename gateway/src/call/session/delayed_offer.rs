//! Delayed offer (RFC 3261 §13.2.1, RFC 3264): the INVITE carried no SDP, so
//! the 200 OK offers every codec we take and the caller's ACK answers.
//! Some PBX trunks do this by default. Once the 200 OK is out the call is
//! established, so every failure from here on ends it with BYE.

use std::net::IpAddr;

use switchboard_media::sdp::{
    build_media_answer, build_media_offer, negotiate_media, NegotiatedMedia,
};

use super::{parse_offer, response_for, Call, CallInput, Method};
use crate::sip::dialog::Dialog;
use crate::sip::response::default_reason;

impl Call {
    /// Offers, waits for the ACK and reads its answer. On success returns
    /// the agreed media and the SDP that later re-INVITEs are answered with
    /// (our side of the agreed session: one codec, our port).
    pub(super) async fn delayed_offer(
        &mut self,
        dialog: &mut Dialog,
        media_ip: IpAddr,
        rtp_port: u16,
        session_id: u64,
    ) -> Result<(NegotiatedMedia, String), String> {
        let preferences = self.setup.media.codecs.clone();
        let offer = build_media_offer(&preferences, media_ip, rtp_port, session_id, 1);
        tracing::info!("INVITE without SDP: offering in the 200 OK");
        self.answer(&offer).await;
        let failure = loop {
            match self.setup.inputs.recv().await {
                Some(CallInput::Ack(ack)) => {
                    let answer = match parse_offer(&ack) {
                        Ok(answer) => answer,
                        Err(reason) => break format!("no usable SDP answer in the ACK: {reason}"),
                    };
                    return match negotiate_media(&answer, &preferences) {
                        Ok(negotiated) => {
                            let ours = build_media_answer(
                                &answer,
                                &negotiated,
                                media_ip,
                                rtp_port,
                                session_id,
                                1,
                            );
                            Ok((negotiated, ours))
                        }
                        Err(error) => {
                            break format!("the ACK's answer has no codec we offered: {error}")
                        }
                    };
                }
                Some(CallInput::Request { tx, request }) => {
                    if request.method == Method::Bye {
                        let response = response_for(&request, 200, "OK", None);
                        self.send(super::EndpointCommand::Respond { tx, response })
                            .await;
                        return Err("caller hung up before acknowledging our offer".into());
                    }
                    // RFC 3261 §14.2: no new offer while ours is unanswered.
                    let status = if request.method == Method::Invite {
                        491
                    } else {
                        200
                    };
                    let response = response_for(&request, status, default_reason(status), None);
                    self.send(super::EndpointCommand::Respond { tx, response })
                        .await;
                }
                Some(CallInput::AckTimeout) => {
                    return Err("our 200 OK with the offer was never acknowledged".into())
                }
                Some(CallInput::Shutdown) | None => break "gateway shutting down".into(),
                Some(_) => {}
            }
        };
        tracing::warn!(reason = %failure, "delayed offer failed: hanging up");
        self.send_bye(dialog).await;
        Err(failure)
    }
}
