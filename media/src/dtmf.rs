//! RFC 4733 telephone-events: receiving digits from RTP exactly once, and
//! building the packets to send them.
//!
//! One key press is one *event*, identified by its RTP timestamp; the sender
//! repeats packets while the key is held and sends the end packet three
//! times. Phones differ on the marker bit, so a new event is recognised by
//! its timestamp (or a new event code), never by the marker alone.

/// A digit and how long it was held, reported once per key press.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DtmfDigit {
    pub digit: char,
    /// Duration in RTP clock units from the latest packet of the event.
    pub duration: u16,
}

/// Maps an RFC 4733 event code to its DTMF character.
pub fn event_to_char(event: u8) -> Option<char> {
    Some(match event {
        0..=9 => (b'0' + event) as char,
        10 => '*',
        11 => '#',
        12..=15 => (b'A' + event - 12) as char,
        _ => return None,
    })
}

/// Maps a DTMF character to its RFC 4733 event code.
pub fn char_to_event(digit: char) -> Option<u8> {
    Some(match digit {
        '0'..='9' => digit as u8 - b'0',
        '*' => 10,
        '#' => 11,
        'A'..='D' => digit as u8 - b'A' + 12,
        'a'..='d' => digit as u8 - b'a' + 12,
        _ => return None,
    })
}

/// Receives telephone-event payloads of one stream.
#[derive(Debug, Default)]
pub struct DtmfReceiver {
    /// (timestamp, event) of the last event reported.
    last: Option<(u32, u8)>,
}

impl DtmfReceiver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one telephone-event payload with its RTP timestamp; returns the
    /// digit the first time an event is seen. Malformed payloads and
    /// non-DTMF events (flash, tones) are ignored.
    pub fn on_packet(&mut self, payload: &[u8], timestamp: u32) -> Option<DtmfDigit> {
        if payload.len() < 4 {
            return None;
        }
        let event = payload[0];
        let digit = event_to_char(event)?;
        let duration = u16::from_be_bytes([payload[2], payload[3]]);
        if self.last == Some((timestamp, event)) {
            return None; // continuation or end retransmission
        }
        self.last = Some((timestamp, event));
        Some(DtmfDigit { digit, duration })
    }
}

/// The payload of one telephone-event packet (4 bytes).
pub fn event_payload(digit: char, end: bool, volume: u8, duration: u16) -> Option<[u8; 4]> {
    let event = char_to_event(digit)?;
    let duration = duration.to_be_bytes();
    Some([
        event,
        (u8::from(end) << 7) | (volume & 0x3f),
        duration[0],
        duration[1],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a phone sends for one key held 100 ms: marker on the first
    /// packet, growing duration, end packet three times.
    fn press(digit: char, timestamp: u32, marker_on_first: bool) -> Vec<([u8; 4], u32, bool)> {
        let mut packets = Vec::new();
        for step in 1..=5u16 {
            let end = step == 5;
            let payload = event_payload(digit, end, 10, step * 160).unwrap();
            let repeats = if end { 3 } else { 1 };
            for _ in 0..repeats {
                packets.push((payload, timestamp, marker_on_first && step == 1));
            }
        }
        packets
    }

    #[test]
    fn each_press_is_reported_once() {
        let mut receiver = DtmfReceiver::new();
        let mut digits = Vec::new();
        for (digit, ts, marker) in [
            ('1', 1000, true),
            ('1', 3000, false),
            ('#', 5000, true),
            ('D', 7000, false),
        ] {
            for (payload, timestamp, _) in press(digit, ts, marker) {
                if let Some(found) = receiver.on_packet(&payload, timestamp) {
                    digits.push(found.digit);
                }
            }
        }
        assert_eq!(digits, vec!['1', '1', '#', 'D']);
    }

    #[test]
    fn short_or_unknown_payloads_are_ignored() {
        let mut receiver = DtmfReceiver::new();
        assert_eq!(receiver.on_packet(&[1, 0, 0], 10), None);
        assert_eq!(
            receiver.on_packet(&[16, 0x80, 0, 160], 10),
            None,
            "flash is not a digit"
        );
        assert_eq!(
            receiver.on_packet(&[5, 0x80, 0, 160], 10).map(|d| d.digit),
            Some('5')
        );
    }

    #[test]
    fn codes_round_trip() {
        for code in 0..16 {
            assert_eq!(char_to_event(event_to_char(code).unwrap()), Some(code));
        }
        assert_eq!(event_payload('#', true, 10, 800), Some([11, 0x8a, 3, 32]));
    }
}
