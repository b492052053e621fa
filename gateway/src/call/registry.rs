//! Every call as a Twilio-style resource: its Sid, parties, status and
//! times, and a handle to control it while it lasts. The Calls API reads
//! and controls calls through it; calls report their own progress. Ended
//! calls stay readable (the most recent [`KEEP_ENDED`]) so a bot that asks
//! about a call that just hung up learns it completed.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::CallInput;

/// Ended calls kept for reading; older ones are forgotten.
pub const KEEP_ENDED: usize = 10_000;

/// Twilio's call statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallStatus {
    Queued,
    Ringing,
    InProgress,
    Completed,
    Busy,
    NoAnswer,
    Failed,
    Canceled,
}

impl CallStatus {
    pub fn name(self) -> &'static str {
        match self {
            CallStatus::Queued => "queued",
            CallStatus::Ringing => "ringing",
            CallStatus::InProgress => "in-progress",
            CallStatus::Completed => "completed",
            CallStatus::Busy => "busy",
            CallStatus::NoAnswer => "no-answer",
            CallStatus::Failed => "failed",
            CallStatus::Canceled => "canceled",
        }
    }

    pub fn parse(text: &str) -> Option<CallStatus> {
        [
            CallStatus::Queued,
            CallStatus::Ringing,
            CallStatus::InProgress,
            CallStatus::Completed,
            CallStatus::Busy,
            CallStatus::NoAnswer,
            CallStatus::Failed,
            CallStatus::Canceled,
        ]
        .into_iter()
        .find(|status| status.name() == text)
    }

    pub fn is_final(self) -> bool {
        !matches!(
            self,
            CallStatus::Queued | CallStatus::Ringing | CallStatus::InProgress
        )
    }
}

/// Who started the call (Twilio's `direction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    OutboundApi,
    OutboundDial,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::OutboundApi => "outbound-api",
            Direction::OutboundDial => "outbound-dial",
        }
    }
}

/// The caller as Twilio's `From` shows it: the user part of the From URI
/// (the whole URI when it has none).
pub fn caller_id(invite: &crate::sip::message::Request) -> String {
    invite
        .from()
        .ok()
        .map(|from| {
            from.uri
                .user
                .clone()
                .unwrap_or_else(|| from.uri.to_string())
        })
        .unwrap_or_default()
}

/// What a call reports about itself, and how to reach it.
#[derive(Clone, Debug)]
pub struct CallRecord {
    pub sid: String,
    pub call_id: String,
    pub from: String,
    pub to: String,
    pub direction: Direction,
    pub status: CallStatus,
    pub parent_call_sid: Option<String>,
    pub created: SystemTime,
    /// When it was answered.
    pub started: Option<SystemTime>,
    pub ended: Option<SystemTime>,
    /// The call's input queue while it lasts.
    pub control: Option<mpsc::Sender<CallInput>>,
}

impl CallRecord {
    /// A call that came in with `invite`, routed on `number`.
    pub fn inbound(
        call_id: &str,
        invite: &crate::sip::message::Request,
        number: &str,
        control: mpsc::Sender<CallInput>,
    ) -> CallRecord {
        let from = caller_id(invite);
        CallRecord {
            sid: switchboard_flows::call_sid(call_id),
            call_id: call_id.to_string(),
            from,
            to: number.to_string(),
            direction: Direction::Inbound,
            status: CallStatus::Ringing,
            parent_call_sid: None,
            created: SystemTime::now(),
            started: None,
            ended: None,
            control: Some(control),
        }
    }

    /// Seconds from answer to end (0 when never answered), once ended.
    pub fn duration(&self) -> Option<u64> {
        let ended = self.ended?;
        Some(
            self.started
                .and_then(|started| ended.duration_since(started).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    }
}

/// An ended call as the registry keeps it: its strings back to back in one
/// allocation. Kept as [`CallRecord`]s, the ten thousand most recent calls
/// were seven small allocations each, made while the heap was full of
/// short-lived call state; they pinned pages all over it, and after a burst
/// RSS stayed 11 MB above what keeping 100 calls left (BENCHMARKS.md,
/// "Memory after a burst").
#[derive(Clone)]
struct EndedCall {
    /// Sid, Call-ID, From, To and the parent's Sid, back to back.
    text: Arc<str>,
    /// Where each of the first four ends in `text`; the parent's Sid is
    /// the rest (empty: none).
    ends: [u32; 4],
    direction: Direction,
    status: CallStatus,
    created: SystemTime,
    started: Option<SystemTime>,
    ended: Option<SystemTime>,
}

impl EndedCall {
    fn new(record: &CallRecord) -> EndedCall {
        let parent = record.parent_call_sid.as_deref().unwrap_or("");
        let parts = [
            record.sid.as_str(),
            &record.call_id,
            &record.from,
            &record.to,
            parent,
        ];
        let mut ends = [0u32; 4];
        let mut end = 0usize;
        for (slot, part) in ends.iter_mut().zip(parts) {
            end += part.len();
            *slot = u32::try_from(end).unwrap_or(u32::MAX);
        }
        EndedCall {
            text: parts.concat().into(),
            ends,
            direction: record.direction,
            status: record.status,
            created: record.created,
            started: record.started,
            ended: record.ended,
        }
    }

    fn part(&self, index: usize) -> &str {
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] as usize
        };
        let end = self
            .ends
            .get(index)
            .map_or(self.text.len(), |&e| e as usize);
        self.text.get(start..end).unwrap_or("")
    }

    fn sid(&self) -> &str {
        self.part(0)
    }

    fn record(&self) -> CallRecord {
        let parent = self.part(4);
        CallRecord {
            sid: self.sid().to_string(),
            call_id: self.part(1).to_string(),
            from: self.part(2).to_string(),
            to: self.part(3).to_string(),
            direction: self.direction,
            status: self.status,
            parent_call_sid: (!parent.is_empty()).then(|| parent.to_string()),
            created: self.created,
            started: self.started,
            ended: self.ended,
            control: None,
        }
    }
}

/// Found by Sid: the set looks an ended call up with a `&str`.
impl Borrow<str> for EndedCall {
    fn borrow(&self) -> &str {
        self.sid()
    }
}

impl PartialEq for EndedCall {
    fn eq(&self, other: &Self) -> bool {
        self.sid() == other.sid()
    }
}

impl Eq for EndedCall {}

impl Hash for EndedCall {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.sid().hash(state);
    }
}

#[derive(Default)]
struct Calls {
    live: HashMap<String, CallRecord>,
    ended: HashSet<EndedCall>,
    /// The same ended calls (sharing their text), oldest first, to forget
    /// beyond [`KEEP_ENDED`].
    ended_order: VecDeque<EndedCall>,
}

/// Live and recently ended calls by Sid.
#[derive(Default)]
pub struct CallRegistry {
    calls: RwLock<Calls>,
}

impl CallRegistry {
    pub fn insert(&self, record: CallRecord) {
        let mut calls = self.calls.write().unwrap();
        calls.live.insert(record.sid.clone(), record);
    }

    /// Lists a new call; it stays live until the handle drops.
    pub fn open(self: &Arc<Self>, record: CallRecord) -> CallResource {
        let sid = record.sid.clone();
        self.insert(record);
        CallResource {
            registry: self.clone(),
            sid,
            end_status: CallStatus::Failed,
        }
    }

    pub fn get(&self, sid: &str) -> Option<CallRecord> {
        let calls = self.calls.read().unwrap();
        calls
            .live
            .get(sid)
            .cloned()
            .or_else(|| calls.ended.get(sid).map(EndedCall::record))
    }

    /// Every call, newest first, that `keep` accepts.
    pub fn list(&self, keep: impl Fn(&CallRecord) -> bool) -> Vec<CallRecord> {
        let calls = self.calls.read().unwrap();
        let mut all: Vec<CallRecord> = calls
            .live
            .values()
            .filter(|record| keep(record))
            .cloned()
            .chain(
                calls
                    .ended
                    .iter()
                    .map(EndedCall::record)
                    .filter(|record| keep(record)),
            )
            .collect();
        all.sort_by(|a, b| b.created.cmp(&a.created).then(b.sid.cmp(&a.sid)));
        all
    }

    /// A live call's status moved on (answered: its start time is set). A
    /// final status, once set, stays.
    pub fn set_status(&self, sid: &str, status: CallStatus) {
        let mut calls = self.calls.write().unwrap();
        if let Some(record) = calls.live.get_mut(sid).filter(|r| !r.status.is_final()) {
            if status == CallStatus::InProgress && record.started.is_none() {
                record.started = Some(SystemTime::now());
            }
            record.status = status;
        }
    }

    /// The call ended with `status` (unless it had a final one already);
    /// it stays readable, and can no longer be controlled.
    pub fn finish(&self, sid: &str, status: CallStatus) {
        let mut calls = self.calls.write().unwrap();
        let Some(mut record) = calls.live.remove(sid) else {
            return;
        };
        if record.status == CallStatus::InProgress {
            record.status = CallStatus::Completed;
        } else if !record.status.is_final() {
            record.status = status;
        }
        record.ended = Some(SystemTime::now());
        let ended = EndedCall::new(&record);
        calls.ended_order.push_back(ended.clone());
        calls.ended.replace(ended);
        while calls.ended_order.len() > KEEP_ENDED {
            if let Some(oldest) = calls.ended_order.pop_front() {
                calls.ended.remove(oldest.sid());
            }
        }
    }

    /// The input queue of a live call.
    pub fn control(&self, sid: &str) -> Option<mpsc::Sender<CallInput>> {
        let calls = self.calls.read().unwrap();
        calls
            .live
            .get(sid)
            .and_then(|record| record.control.clone())
    }
}

/// A call's own handle on its resource: it reports progress through it,
/// and the resource is marked ended when the handle drops — however the
/// call ends, a panic or an aborted task included.
pub struct CallResource {
    registry: Arc<CallRegistry>,
    sid: String,
    /// The status a call that never reached a final one ends with.
    pub end_status: CallStatus,
}

impl CallResource {
    pub fn sid(&self) -> &str {
        &self.sid
    }

    pub fn set_status(&self, status: CallStatus) {
        self.registry.set_status(&self.sid, status);
    }
}

impl Drop for CallResource {
    fn drop(&mut self) {
        self.registry.finish(&self.sid, self.end_status);
    }
}

/// `Tue, 31 Aug 2010 20:36:28 +0000`: how Twilio writes times.
pub fn rfc2822(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let (hour, minute, second) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {hour:02}:{minute:02}:{second:02} +0000",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(sid: &str) -> CallRecord {
        CallRecord {
            sid: sid.into(),
            call_id: format!("{sid}@test"),
            from: "alice".into(),
            to: "+15550100".into(),
            direction: Direction::Inbound,
            status: CallStatus::Ringing,
            parent_call_sid: None,
            created: SystemTime::now(),
            started: None,
            ended: None,
            control: None,
        }
    }

    /// An ended call reads back as it was, from its compact form.
    #[test]
    fn an_ended_call_reads_back_whole() {
        let registry = Arc::new(CallRegistry::default());
        let mut child = record("CA2");
        child.parent_call_sid = Some("CA1".into());
        child.direction = Direction::OutboundDial;
        child.from = "αλίκη".into();
        let created = child.created;
        let resource = registry.open(child);
        resource.set_status(CallStatus::InProgress);
        drop(resource);
        let ended = registry.get("CA2").expect("still readable");
        assert_eq!(ended.sid, "CA2");
        assert_eq!(ended.call_id, "CA2@test");
        assert_eq!(ended.from, "αλίκη");
        assert_eq!(ended.to, "+15550100");
        assert_eq!(ended.parent_call_sid.as_deref(), Some("CA1"));
        assert_eq!(ended.direction, Direction::OutboundDial);
        assert_eq!(ended.status, CallStatus::Completed);
        assert_eq!(ended.created, created);
        assert!(ended.started.is_some() && ended.ended.is_some());
        assert!(ended.control.is_none());

        let _live = registry.open(record("CA3"));
        let listed = registry.list(|r| r.parent_call_sid.is_none());
        assert_eq!(listed.len(), 1, "only the live CA3 has no parent");
        assert_eq!(registry.list(|_| true).len(), 2);
    }

    #[test]
    fn times_are_written_as_twilio_does() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_283_286_988);
        assert_eq!(rfc2822(at), "Tue, 31 Aug 2010 20:36:28 +0000");
        assert_eq!(
            rfc2822(SystemTime::UNIX_EPOCH),
            "Thu, 01 Jan 1970 00:00:00 +0000"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_164_800);
        assert_eq!(rfc2822(leap), "Thu, 29 Feb 2024 00:00:00 +0000");
    }

    #[test]
    fn ended_calls_stay_readable_but_bounded() {
        let registry = CallRegistry::default();
        registry.insert(record("CA1"));
        registry.set_status("CA1", CallStatus::InProgress);
        assert!(registry.get("CA1").unwrap().started.is_some());
        registry.finish("CA1", CallStatus::Completed);
        let ended = registry.get("CA1").unwrap();
        assert_eq!(ended.status, CallStatus::Completed);
        assert!(ended.duration().is_some());
        assert!(registry.control("CA1").is_none());
        // A busy call keeps its status when the task ends.
        registry.insert(record("CA2"));
        registry.set_status("CA2", CallStatus::Busy);
        registry.finish("CA2", CallStatus::Completed);
        assert_eq!(registry.get("CA2").unwrap().status, CallStatus::Busy);
        for n in 0..KEEP_ENDED + 5 {
            let sid = format!("CAx{n}");
            registry.insert(record(&sid));
            registry.finish(&sid, CallStatus::Completed);
        }
        assert!(registry.get("CA1").is_none(), "the oldest are forgotten");
        assert_eq!(registry.list(|_| true).len(), KEEP_ENDED);
    }
}
