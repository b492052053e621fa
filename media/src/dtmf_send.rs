//! Sending DTMF as RFC 4733 telephone-events, sans-IO.
//!
//! Digits are queued and played one after another, one packet per tick:
//! each key is held [`TONE_MS`] (packets with a growing duration, the first
//! with the marker bit, all with the timestamp of the event's start), ends
//! with the end packet sent three times (RFC 4733 §2.5.1.4: the end is what
//! a receiver must not miss), then [`GAP_MS`] of ordinary audio before the
//! next key, so receivers see distinct presses even for repeated digits.

use std::collections::VecDeque;

use crate::dtmf::event_payload;

/// How long each key is held; phones and IVRs expect 70–100 ms or more.
pub const TONE_MS: u32 = 100;
/// Pause between keys.
pub const GAP_MS: u32 = 60;
/// Digits waiting to be sent; a bot asking for more is refused.
pub const MAX_QUEUED_DIGITS: usize = 64;
/// Power level of the tone, in -dBm0 (RFC 4733 §2.3.4): a typical keypad level.
const VOLUME: u8 = 10;
/// End-of-event packets sent per key.
const END_REPEATS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfSendError {
    #[error("{0:?} is not a DTMF digit (0-9, *, #, A-D)")]
    NotADigit(char),
    #[error("too many digits queued (at most {MAX_QUEUED_DIGITS})")]
    QueueFull,
}

/// One telephone-event packet to send instead of an audio packet this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    pub payload: [u8; 4],
    /// First packet of an event: set the RTP marker bit and take the
    /// stream's current timestamp as the event's timestamp.
    pub start: bool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Idle,
    /// `sent` packets of the key so far.
    Tone {
        digit: char,
        sent: u32,
    },
    End {
        digit: char,
        repeats_left: u32,
    },
    Gap {
        ticks_left: u32,
    },
}

#[derive(Debug)]
pub struct DtmfSender {
    queue: VecDeque<char>,
    state: State,
    /// RTP clock units per packet.
    packet_duration: u32,
    tone_packets: u32,
    gap_packets: u32,
}

impl DtmfSender {
    /// `clock_rate` of the telephone-event payload type, `packet_ms` the ptime.
    pub fn new(clock_rate: u32, packet_ms: u32) -> Self {
        let packet_ms = packet_ms.max(1);
        Self {
            queue: VecDeque::with_capacity(MAX_QUEUED_DIGITS),
            state: State::Idle,
            packet_duration: clock_rate / 1000 * packet_ms,
            tone_packets: TONE_MS.div_ceil(packet_ms),
            gap_packets: GAP_MS.div_ceil(packet_ms),
        }
    }

    /// Queue digits to send; all or none are queued.
    pub fn enqueue(&mut self, digits: &str) -> Result<usize, DtmfSendError> {
        if let Some(bad) = digits
            .chars()
            .find(|c| event_payload(*c, false, 0, 0).is_none())
        {
            return Err(DtmfSendError::NotADigit(bad));
        }
        let count = digits.chars().count();
        if self.queue.len() + count > MAX_QUEUED_DIGITS {
            return Err(DtmfSendError::QueueFull);
        }
        self.queue
            .extend(digits.chars().map(|c| c.to_ascii_uppercase()));
        Ok(count)
    }

    /// True while digits are being sent or wait to be.
    pub fn is_busy(&self) -> bool {
        !matches!(self.state, State::Idle) || !self.queue.is_empty()
    }

    /// Drop what has not been sent yet; a key being sent is still ended properly.
    pub fn cancel(&mut self) {
        self.queue.clear();
    }

    /// The packet to send this tick instead of audio, if any. During the gap
    /// between keys and when idle, audio goes out as usual.
    pub fn tick(&mut self) -> Option<EventPacket> {
        loop {
            match self.state {
                State::Idle => {
                    let digit = self.queue.pop_front()?;
                    self.state = State::Tone { digit, sent: 0 };
                }
                State::Tone { digit, sent } => {
                    let sent = sent + 1;
                    let duration = self.duration(sent);
                    self.state = if sent >= self.tone_packets {
                        State::End {
                            digit,
                            repeats_left: END_REPEATS,
                        }
                    } else {
                        State::Tone { digit, sent }
                    };
                    let payload = event_payload(digit, false, VOLUME, duration)?;
                    return Some(EventPacket {
                        payload,
                        start: sent == 1,
                    });
                }
                State::End {
                    digit,
                    repeats_left,
                } => {
                    let duration = self.duration(self.tone_packets);
                    self.state = if repeats_left > 1 {
                        State::End {
                            digit,
                            repeats_left: repeats_left - 1,
                        }
                    } else {
                        State::Gap {
                            ticks_left: self.gap_packets,
                        }
                    };
                    let payload = event_payload(digit, true, VOLUME, duration)?;
                    return Some(EventPacket {
                        payload,
                        start: false,
                    });
                }
                State::Gap { ticks_left } => {
                    self.state = if ticks_left > 1 {
                        State::Gap {
                            ticks_left: ticks_left - 1,
                        }
                    } else {
                        State::Idle
                    };
                    return None;
                }
            }
        }
    }

    fn duration(&self, packets: u32) -> u16 {
        (packets * self.packet_duration).min(u32::from(u16::MAX)) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtmf::DtmfReceiver;

    /// Ticks until idle; each tick is `Some(packet)` or `None` for audio.
    fn run(sender: &mut DtmfSender) -> Vec<Option<EventPacket>> {
        let mut ticks = Vec::new();
        while sender.is_busy() {
            ticks.push(sender.tick());
            assert!(ticks.len() < 10_000);
        }
        ticks
    }

    #[test]
    fn one_key_is_a_100_ms_event_three_ends_and_a_gap() {
        let mut sender = DtmfSender::new(8000, 20);
        sender.enqueue("5").unwrap();
        let ticks = run(&mut sender);
        let events: Vec<EventPacket> = ticks.iter().flatten().copied().collect();
        assert_eq!(events.len(), 5 + 3);
        assert!(events[0].start && events[1..].iter().all(|e| !e.start));
        let durations: Vec<u16> = events
            .iter()
            .map(|e| u16::from_be_bytes([e.payload[2], e.payload[3]]))
            .collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800, 800]);
        let ends = events.iter().filter(|e| e.payload[1] & 0x80 != 0).count();
        assert_eq!(ends, 3);
        assert!(events.iter().all(|e| e.payload[0] == 5));
        assert_eq!(ticks.iter().filter(|t| t.is_none()).count(), 3, "60 ms gap");
    }

    #[test]
    fn a_receiver_sees_each_digit_once_even_repeated() {
        let mut sender = DtmfSender::new(8000, 20);
        sender.enqueue("1#1d").unwrap();
        let mut receiver = DtmfReceiver::new();
        let mut timestamp = 0u32;
        let mut event_timestamp = 0;
        let mut heard = Vec::new();
        for tick in run(&mut sender) {
            if let Some(packet) = tick {
                if packet.start {
                    event_timestamp = timestamp;
                }
                if let Some(digit) = receiver.on_packet(&packet.payload, event_timestamp) {
                    heard.push(digit.digit);
                }
            }
            timestamp += 160;
        }
        assert_eq!(heard, ['1', '#', '1', 'D']);
    }

    #[test]
    fn bad_digits_and_overflow_are_refused_whole() {
        let mut sender = DtmfSender::new(8000, 20);
        assert_eq!(sender.enqueue("12x"), Err(DtmfSendError::NotADigit('x')));
        assert!(!sender.is_busy(), "nothing of a refused string is queued");
        sender.enqueue(&"1".repeat(MAX_QUEUED_DIGITS)).unwrap();
        assert_eq!(sender.enqueue("2"), Err(DtmfSendError::QueueFull));
        sender.cancel();
        assert!(!sender.is_busy());
    }

    #[test]
    fn cancel_finishes_the_key_in_progress() {
        let mut sender = DtmfSender::new(8000, 20);
        sender.enqueue("123").unwrap();
        sender.tick();
        sender.cancel();
        let rest: Vec<EventPacket> = run(&mut sender).into_iter().flatten().collect();
        assert_eq!(rest.len(), 4 + 3, "the first key still ends");
        assert!(rest.iter().all(|e| e.payload[0] == 1));
    }
}
