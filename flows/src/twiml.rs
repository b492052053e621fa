//! The subset of TwiML that Switchboard understands (PROTOCOLS.md §2), parsed
//! with quick-xml into [`Verb`]s, and the mapping from verbs to [`Action`]s.
//!
//! Bots send TwiML as the body of a Voiceflow-style `twiml` action, e.g.
//! `<Response><Dial><Sip>sip:agent@pbx;transport=tcp</Sip></Dial></Response>`.
//! The input is untrusted: its size, element count and depth are bounded, a
//! DOCTYPE is refused (no custom entities), and every value that later ends
//! up in SIP signalling is checked here.

use std::collections::BTreeMap;

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use crate::action::{Action, DialTarget};

/// Largest TwiML document accepted.
pub const MAX_TWIML_BYTES: usize = 64 * 1024;
/// Most elements one document may hold (a real one has a handful).
pub const MAX_ELEMENTS: usize = 256;
/// Deepest nesting accepted: `Response > Connect > Stream > Parameter` is 4.
pub const MAX_DEPTH: usize = 8;
/// Longest SIP URI accepted, X- headers included (PROTOCOLS.md §1).
const MAX_URI_LEN: usize = 1280;
use crate::action::{DEFAULT_DIAL_TIMEOUT_SECS as DEFAULT_TIMEOUT_SECS, DEFAULT_TIME_LIMIT_SECS};

/// One TwiML verb, in document order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verb {
    Dial(Dial),
    Hangup,
    /// `reason` is `rejected` (the default) or `busy`.
    Reject {
        reason: String,
    },
    Pause {
        length_secs: u32,
    },
    Redirect {
        url: String,
    },
    /// `<Refer><Sip>uri</Sip></Refer>`.
    Refer {
        uri: String,
    },
    /// `<Connect><Stream url="…"><Parameter name="…" value="…"/></Stream></Connect>`.
    Connect {
        stream_url: String,
        parameters: BTreeMap<String, String>,
    },
    /// `<Gather input="dtmf">`: collect key presses while its prompts play.
    Gather(Gather),
    /// `loop_count` 0 is Twilio's "until the call ends" (capped by the
    /// player).
    Play {
        url: String,
        loop_count: u32,
    },
}

impl Verb {
    /// The element name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Verb::Dial(_) => "Dial",
            Verb::Hangup => "Hangup",
            Verb::Reject { .. } => "Reject",
            Verb::Pause { .. } => "Pause",
            Verb::Redirect { .. } => "Redirect",
            Verb::Refer { .. } => "Refer",
            Verb::Connect { .. } => "Connect",
            Verb::Play { .. } => "Play",
            Verb::Gather(_) => "Gather",
        }
    }
}

/// `<Dial>` with its one noun.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dial {
    pub target: DialNoun,
    /// `timeout`: ring seconds, default 30.
    pub timeout_secs: u32,
    /// `timeLimit`: longest call in seconds, default 14400.
    pub time_limit_secs: u32,
    /// `callerId`.
    pub caller_id: Option<String>,
    /// `answerOnBridge`, default false.
    pub answer_on_bridge: bool,
    /// `action`: URL told how the dialled leg ended.
    pub action: Option<String>,
    /// `method` for the action: GET instead of the default POST.
    pub method_get: bool,
    /// `hangupOnStar`, default false.
    pub hangup_on_star: bool,
    /// `record`, e.g. `record-from-answer`.
    pub record: Option<String>,
}

/// What a `<Dial>` calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialNoun {
    /// `<Sip username=… password=…>uri</Sip>`; the URI keeps its parameters
    /// and `?X-Header=v` part as written.
    Sip {
        uri: String,
        username: Option<String>,
        password: Option<String>,
        /// Dial through this outbound registration.
        registration: Option<String>,
        /// `statusCallback` with its events and method.
        status_callback: Option<crate::action::DialStatusCallback>,
    },
    /// `<Number>` (or bare text in `<Dial>`): to be sent to a trunk.
    Number(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TwimlError {
    #[error("TwiML is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("TwiML holds more than {0} elements")]
    TooManyElements(usize),
    #[error("TwiML nests deeper than {0} elements")]
    TooDeep(usize),
    #[error("malformed XML: {0}")]
    Malformed(String),
    #[error("the root element must be <Response>, not <{0}>")]
    WrongRoot(String),
    #[error("unknown verb <{0}>")]
    UnknownVerb(String),
    #[error("<{element}>: {reason}")]
    Invalid { element: String, reason: String },
    #[error("<{0}> is not supported here")]
    Unsupported(String),
}

fn invalid(element: &str, reason: impl Into<String>) -> TwimlError {
    TwimlError::Invalid {
        element: element.to_owned(),
        reason: reason.into(),
    }
}

/// Parse a `<Response>` document into its verbs.
pub fn parse_twiml(text: &str) -> Result<Vec<Verb>, TwimlError> {
    let root = parse_tree(text)?;
    root.elements()?.into_iter().map(verb).collect()
}

/// The actions the verbs ask for, in order. Verbs the gateway cannot turn
/// into an action (`Pause`, `Play`, `Connect`) fail the
/// whole document rather than run half of it.
pub fn actions_from_twiml(verbs: &[Verb]) -> Result<Vec<Action>, TwimlError> {
    verbs
        .iter()
        .map(|verb| match verb {
            Verb::Dial(dial) => match &dial.target {
                DialNoun::Sip {
                    uri,
                    username,
                    password,
                    registration,
                    status_callback,
                } => Ok(Action::Dial(DialTarget {
                    status_callback: status_callback.clone().map(Box::new),
                    registration: registration.clone(),
                    uri: uri.clone(),
                    caller_id: dial.caller_id.clone(),
                    username: username.clone(),
                    password: password.clone(),
                    timeout_secs: dial.timeout_secs,
                    time_limit_secs: dial.time_limit_secs,
                    action: dial.action.clone(),
                    method_get: dial.method_get,
                    hangup_on_star: dial.hangup_on_star,
                    number: None,
                })),
                DialNoun::Number(number) => {
                    let number = normalised_number(number);
                    Ok(Action::Dial(DialTarget {
                        uri: format!("tel:{number}"),
                        number: Some(number),
                        caller_id: dial.caller_id.clone(),
                        timeout_secs: dial.timeout_secs,
                        time_limit_secs: dial.time_limit_secs,
                        action: dial.action.clone(),
                        method_get: dial.method_get,
                        hangup_on_star: dial.hangup_on_star,
                        ..DialTarget::default()
                    }))
                }
            },
            Verb::Hangup => Ok(Action::Hangup { reason: None }),
            Verb::Reject { reason } => Ok(Action::Hangup {
                reason: Some(reason.clone()),
            }),
            Verb::Refer { uri } => Ok(Action::Refer { uri: uri.clone() }),
            Verb::Redirect { url } => Ok(Action::Redirect { url: url.clone() }),
            Verb::Pause { .. } | Verb::Play { .. } | Verb::Connect { .. } | Verb::Gather(_) => {
                Err(TwimlError::Unsupported(verb.name().into()))
            }
        })
        .collect()
}

// ---- the document as a small tree --------------------------------------------

#[derive(Debug)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
}

#[derive(Debug)]
enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Child elements; text between them must be blank.
    fn elements(&self) -> Result<Vec<&Element>, TwimlError> {
        let mut out = Vec::new();
        for child in &self.children {
            match child {
                Node::Element(element) => out.push(element),
                Node::Text(text) if text.trim().is_empty() => {}
                Node::Text(_) => return Err(invalid(&self.name, "unexpected text")),
            }
        }
        Ok(out)
    }

    /// Trimmed text content; child elements are an error.
    fn text(&self) -> Result<String, TwimlError> {
        let mut out = String::new();
        for child in &self.children {
            match child {
                Node::Text(text) => out.push_str(text),
                Node::Element(e) => {
                    return Err(invalid(&self.name, format!("unexpected <{}>", e.name)))
                }
            }
        }
        Ok(out.trim().to_owned())
    }

    fn no_content(&self) -> Result<(), TwimlError> {
        if self.text()?.is_empty() {
            Ok(())
        } else {
            Err(invalid(&self.name, "takes no content"))
        }
    }

    fn bool_attr(&self, name: &str) -> Result<bool, TwimlError> {
        match self.attr(name).map(str::trim) {
            None => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(_) => Err(invalid(&self.name, format!("{name} must be true or false"))),
        }
    }

    fn number_attr(&self, name: &str, default: u32, max: u32) -> Result<u32, TwimlError> {
        let Some(text) = self.attr(name) else {
            return Ok(default);
        };
        match text.trim().parse::<u32>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(invalid(
                &self.name,
                format!("{name} must be a whole number of seconds up to {max}"),
            )),
        }
    }
}

fn malformed(reader: &Reader<&[u8]>, error: impl std::fmt::Display) -> TwimlError {
    TwimlError::Malformed(format!("{error} (at byte {})", reader.error_position()))
}

fn open_element(start: &BytesStart<'_>) -> Result<Element, TwimlError> {
    let name = start.name().as_ref().to_owned();
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| TwimlError::Malformed(format!("<{name}>: {e}")))?;
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| TwimlError::Malformed(format!("<{name}>: {e}")))?;
        attrs.push((attr.key.as_ref().to_owned(), value.into_owned()));
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
    })
}

/// Text goes to the innermost open element; adjacent pieces (split by
/// entity references) are merged.
fn push_text(stack: &mut [Element], text: &str) -> Result<(), TwimlError> {
    let Some(parent) = stack.last_mut() else {
        if text.trim().is_empty() {
            return Ok(());
        }
        return Err(TwimlError::Malformed(
            "text outside the root element".into(),
        ));
    };
    match parent.children.last_mut() {
        Some(Node::Text(last)) => last.push_str(text),
        _ => parent.children.push(Node::Text(text.to_owned())),
    }
    Ok(())
}

fn parse_tree(text: &str) -> Result<Element, TwimlError> {
    if text.len() > MAX_TWIML_BYTES {
        return Err(TwimlError::TooLarge {
            len: text.len(),
            max: MAX_TWIML_BYTES,
        });
    }
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let event = reader.read_event().map_err(|e| malformed(&reader, e))?;
        let (start, empty) = match event {
            Event::Start(start) => (start, false),
            Event::Empty(start) => (start, true),
            Event::End(_) => {
                let element = stack
                    .pop()
                    .ok_or_else(|| malformed(&reader, "unexpected end tag"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(element)),
                    None => root = Some(element),
                }
                continue;
            }
            Event::Text(t) => {
                push_text(&mut stack, &t.xml10_content())?;
                continue;
            }
            Event::CData(c) => {
                push_text(&mut stack, &c.xml10_content())?;
                continue;
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => match resolve_predefined_entity(&r) {
                        Some(s) => s.to_owned(),
                        None => {
                            return Err(malformed(&reader, format!("unknown entity &{};", &*r)))
                        }
                    },
                    Err(e) => return Err(malformed(&reader, e)),
                };
                push_text(&mut stack, &resolved)?;
                continue;
            }
            Event::DocType(_) => return Err(malformed(&reader, "DOCTYPE is not allowed")),
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => continue,
            Event::Eof => break,
        };
        if root.is_some() {
            return Err(malformed(&reader, "more than one root element"));
        }
        count += 1;
        if count > MAX_ELEMENTS {
            return Err(TwimlError::TooManyElements(MAX_ELEMENTS));
        }
        if stack.len() >= MAX_DEPTH {
            return Err(TwimlError::TooDeep(MAX_DEPTH));
        }
        let element = open_element(&start)?;
        if stack.is_empty() && element.name != "Response" {
            return Err(TwimlError::WrongRoot(element.name));
        }
        if !empty {
            stack.push(element);
            continue;
        }
        match stack.last_mut() {
            Some(parent) => parent.children.push(Node::Element(element)),
            None => root = Some(element),
        }
    }
    if let Some(open) = stack.last() {
        return Err(TwimlError::Malformed(format!(
            "<{}> is not closed",
            open.name
        )));
    }
    root.ok_or_else(|| TwimlError::Malformed("no root element".into()))
}

/// `<Gather>`'s settings and prompts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gather {
    /// Stop after this many digits (none: at `finish_on_key` or timeout).
    pub num_digits: Option<u32>,
    /// Seconds to wait for the first digit after the prompts, and between
    /// digits.
    pub timeout_secs: u32,
    /// The key that ends input (not part of `Digits`); none when empty.
    pub finish_on_key: Option<char>,
    /// Where `Digits` go (absolute, or a path relative to the document's
    /// URL); the TwiML it answers runs next.
    pub action: Option<String>,
    pub method_get: bool,
    /// `<Play>` and `<Pause>` played until the first key press.
    pub prompts: Vec<Verb>,
}

// ---- verbs -------------------------------------------------------------------

fn gather(element: &Element) -> Result<Gather, TwimlError> {
    let input = element.attr("input").unwrap_or("dtmf").trim();
    if input != "dtmf" {
        return Err(invalid(
            "Gather",
            format!("input {input:?} is not available here (dtmf only)"),
        ));
    }
    let num_digits = match element.attr("numDigits") {
        None => None,
        Some(_) => Some(element.number_attr("numDigits", 1, 64)?),
    };
    let finish_on_key = match element.attr("finishOnKey").map(str::trim) {
        None => Some('#'),
        Some("") => None,
        Some(key) if key.len() == 1 && "0123456789*#".contains(key) => key.chars().next(),
        Some(key) => {
            return Err(invalid(
                "Gather",
                format!("finishOnKey {key:?} is not one key"),
            ))
        }
    };
    // Relative actions (`/menu`) resolve against the document's own URL.
    let action = match element.attr("action").map(str::trim) {
        None => None,
        Some(path) if path.starts_with('/') && !path.starts_with("//") => Some(path.to_owned()),
        Some(url) => Some(checked_url(element, url.to_owned(), &["http", "https"])?),
    };
    let method_get = match element.attr("method").map(str::trim) {
        None => false,
        Some(m) if m.eq_ignore_ascii_case("POST") => false,
        Some(m) if m.eq_ignore_ascii_case("GET") => true,
        Some(m) => {
            return Err(invalid(
                "Gather",
                format!("method {m:?} is not GET or POST"),
            ))
        }
    };
    let mut prompts = Vec::new();
    for child in element.elements()? {
        match child.name.as_str() {
            "Play" | "Pause" => prompts.push(verb(child)?),
            other => return Err(TwimlError::UnknownVerb(format!("Gather><{other}"))),
        }
    }
    Ok(Gather {
        num_digits,
        timeout_secs: element.number_attr("timeout", 5, 600)?.max(1),
        finish_on_key,
        action,
        method_get,
        prompts,
    })
}

fn verb(element: &Element) -> Result<Verb, TwimlError> {
    match element.name.as_str() {
        "Gather" => gather(element).map(Verb::Gather),
        "Dial" => dial(element).map(Verb::Dial),
        "Hangup" => element.no_content().map(|()| Verb::Hangup),
        "Reject" => {
            element.no_content()?;
            let reason = element.attr("reason").unwrap_or("rejected").trim();
            if reason != "rejected" && reason != "busy" {
                return Err(invalid("Reject", "reason must be rejected or busy"));
            }
            Ok(Verb::Reject {
                reason: reason.to_owned(),
            })
        }
        "Pause" => {
            element.no_content()?;
            let length_secs = element.number_attr("length", 1, 600)?;
            Ok(Verb::Pause { length_secs })
        }
        "Redirect" => Ok(Verb::Redirect {
            url: checked_url(element, element.text()?, &["http", "https"])?,
        }),
        "Play" => Ok(Verb::Play {
            loop_count: element.number_attr("loop", 1, 1000)?,
            url: checked_url(element, element.text()?, &["http", "https"])?,
        }),
        "Refer" => match single_noun(element)? {
            noun if noun.name == "Sip" => Ok(Verb::Refer {
                uri: sip_uri(noun)?,
            }),
            noun => Err(invalid(
                "Refer",
                format!("unsupported noun <{}>", noun.name),
            )),
        },
        "Connect" => connect(element),
        other => Err(TwimlError::UnknownVerb(other.to_owned())),
    }
}

/// The one child element of a verb that takes exactly one noun.
fn single_noun(element: &Element) -> Result<&Element, TwimlError> {
    match element.elements()?.as_slice() {
        [noun] => Ok(noun),
        [] => Err(invalid(&element.name, "needs a noun")),
        _ => Err(invalid(&element.name, "takes exactly one noun")),
    }
}

fn dial(element: &Element) -> Result<Dial, TwimlError> {
    let has_elements = element
        .children
        .iter()
        .any(|c| matches!(c, Node::Element(_)));
    let target = if has_elements {
        let noun = single_noun(element)?;
        match noun.name.as_str() {
            "Sip" => {
                let registration = noun.attr("registration").map(|r| r.trim().to_owned());
                let uri = match &registration {
                    Some(_) => extension_uri(noun)?,
                    None => sip_uri(noun)?,
                };
                DialNoun::Sip {
                    uri,
                    username: noun.attr("username").map(str::to_owned),
                    password: noun.attr("password").map(str::to_owned),
                    registration,
                    status_callback: status_callback(noun)?,
                }
            }
            "Number" => DialNoun::Number(phone_number(noun, noun.text()?)?),
            other => return Err(invalid("Dial", format!("unsupported noun <{other}>"))),
        }
    } else {
        // `<Dial>+15551234567</Dial>` is short for a `<Number>`.
        DialNoun::Number(phone_number(element, element.text()?)?)
    };
    let answer_on_bridge = element.bool_attr("answerOnBridge")?;
    let hangup_on_star = element.bool_attr("hangupOnStar")?;
    let method_get = match element.attr("method").map(str::trim) {
        None => false,
        Some(m) if m.eq_ignore_ascii_case("POST") => false,
        Some(m) if m.eq_ignore_ascii_case("GET") => true,
        Some(_) => return Err(invalid("Dial", "method must be GET or POST")),
    };
    let record = match element.attr("record").map(str::trim) {
        None => None,
        Some(
            v @ ("do-not-record"
            | "record-from-answer"
            | "record-from-ringing"
            | "record-from-answer-dual"
            | "record-from-ringing-dual"
            | "true"
            | "false"),
        ) => Some(v.to_owned()),
        Some(other) => return Err(invalid("Dial", format!("unknown record mode {other:?}"))),
    };
    let action = match element.attr("action") {
        Some(url) => Some(checked_url(
            element,
            url.trim().to_owned(),
            &["http", "https"],
        )?),
        None => None,
    };
    let caller_id = match element.attr("callerId").map(str::trim) {
        None | Some("") => None,
        Some(id) => Some(caller_id(id)?),
    };
    let timeout_secs = element.number_attr("timeout", DEFAULT_TIMEOUT_SECS, 600)?;
    if timeout_secs == 0 {
        return Err(invalid("Dial", "timeout must be at least 1 second"));
    }
    let time_limit_secs = element.number_attr("timeLimit", DEFAULT_TIME_LIMIT_SECS, 86_400)?;
    if time_limit_secs == 0 {
        return Err(invalid("Dial", "timeLimit must be at least 1 second"));
    }
    Ok(Dial {
        target,
        timeout_secs,
        time_limit_secs,
        caller_id,
        answer_on_bridge,
        action,
        method_get,
        hangup_on_star,
        record,
    })
}

fn connect(element: &Element) -> Result<Verb, TwimlError> {
    let stream = single_noun(element)?;
    if stream.name != "Stream" {
        return Err(invalid(
            "Connect",
            format!("unsupported noun <{}>", stream.name),
        ));
    }
    let url = stream
        .attr("url")
        .ok_or_else(|| invalid("Stream", "needs a url"))?;
    let stream_url = checked_url(stream, url.trim().to_owned(), &["ws", "wss"])?;
    let mut parameters = BTreeMap::new();
    for parameter in stream.elements()? {
        if parameter.name != "Parameter" {
            return Err(invalid(
                "Stream",
                format!("unexpected <{}>", parameter.name),
            ));
        }
        parameter.no_content()?;
        let name = parameter.attr("name").unwrap_or("").trim();
        if name.is_empty() {
            return Err(invalid("Parameter", "needs a name"));
        }
        let value = parameter.attr("value").unwrap_or("");
        parameters.insert(name.to_owned(), value.to_owned());
    }
    Ok(Verb::Connect {
        stream_url,
        parameters,
    })
}

// ---- values ------------------------------------------------------------------

fn checked_url(element: &Element, text: String, schemes: &[&str]) -> Result<String, TwimlError> {
    match url::Url::parse(&text) {
        Ok(url) if schemes.contains(&url.scheme()) => Ok(text),
        Ok(_) => Err(invalid(
            &element.name,
            format!("URL scheme must be one of {}", schemes.join(", ")),
        )),
        Err(e) => Err(invalid(&element.name, format!("not a URL ({e}): {text:?}"))),
    }
}

/// Is `text` a `sip:`/`sips:` URI fit for signalling? Parameters
/// (`;transport=tcp`, unknown ones too) and `?X-Header=v` are kept as is.
pub fn is_sip_uri(text: &str) -> bool {
    let lower = text.get(..5).unwrap_or(text).to_ascii_lowercase();
    let rest = if lower.starts_with("sip:") {
        &text[4..]
    } else if lower.starts_with("sips:") {
        &text[5..]
    } else {
        return false;
    };
    let address = rest.split([';', '?']).next().unwrap_or("");
    let host = address.rsplit('@').next().unwrap_or("");
    text.len() <= MAX_URI_LEN
        && !host.is_empty()
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"'))
}

fn sip_uri(noun: &Element) -> Result<String, TwimlError> {
    let uri = noun.text()?;
    if uri.is_empty() {
        return Err(invalid(&noun.name, "needs a SIP URI"));
    }
    if !is_sip_uri(&uri) {
        return Err(invalid(
            &noun.name,
            format!("{uri:?} is not a usable sip: or sips: URI"),
        ));
    }
    Ok(uri)
}

/// Through a registration the target may be just an extension:
/// `sip:1002`, or a full SIP URI.
fn extension_uri(noun: &Element) -> Result<String, TwimlError> {
    let text = noun.text()?;
    let user = text.strip_prefix("sip:").unwrap_or(&text);
    let plain = !user.is_empty()
        && user.len() <= 64
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-_.*#".contains(c));
    if plain {
        return Ok(format!("sip:{user}"));
    }
    sip_uri(noun)
}

fn phone_number(element: &Element, text: String) -> Result<String, TwimlError> {
    let digits = text.chars().filter(char::is_ascii_digit).count();
    let allowed = text
        .char_indices()
        .all(|(i, c)| c.is_ascii_digit() || (c == '+' && i == 0) || " -().".contains(c));
    if digits == 0 || !allowed || text.len() > 64 {
        return Err(invalid(
            &element.name,
            format!("{text:?} is not a phone number"),
        ));
    }
    Ok(text)
}

/// `<Sip statusCallback statusCallbackEvent statusCallbackMethod>`.
fn status_callback(
    noun: &Element,
) -> Result<Option<crate::action::DialStatusCallback>, TwimlError> {
    let Some(url) = noun.attr("statusCallback") else {
        return Ok(None);
    };
    let url = checked_url(noun, url.trim().to_owned(), &["http", "https"])?;
    let mut events = Vec::new();
    for event in noun
        .attr("statusCallbackEvent")
        .unwrap_or("completed")
        .split_whitespace()
    {
        if !["initiated", "ringing", "answered", "completed"].contains(&event) {
            return Err(invalid("Sip", format!("statusCallbackEvent {event:?} is not initiated, ringing, answered or completed")));
        }
        events.push(event.to_owned());
    }
    let method_get = match noun.attr("statusCallbackMethod").map(str::trim) {
        None => false,
        Some(m) if m.eq_ignore_ascii_case("POST") => false,
        Some(m) if m.eq_ignore_ascii_case("GET") => true,
        Some(m) => {
            return Err(invalid(
                "Sip",
                format!("statusCallbackMethod {m:?} is not GET or POST"),
            ))
        }
    };
    Ok(Some(crate::action::DialStatusCallback {
        url,
        events,
        method_get,
    }))
}

/// `+1 (415) 555-0100` → `+14155550100`: the digits, with the `+` kept
/// when there was one.
pub fn normalised_number(text: &str) -> String {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    if text.trim_start().starts_with('+') {
        format!("+{digits}")
    } else {
        digits
    }
}

/// A caller ID becomes the user part of a From header: a SIP URI, or
/// alphanumerics and `+-_.` (PROTOCOLS.md §1).
fn caller_id(id: &str) -> Result<String, TwimlError> {
    let plain = id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-_.".contains(c));
    if plain || is_sip_uri(id) {
        Ok(id.to_owned())
    } else {
        Err(invalid("Dial", format!("callerId {id:?} is not usable")))
    }
}

#[cfg(test)]
#[path = "twiml_tests.rs"]
mod tests;
