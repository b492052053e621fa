//! Header names (compact forms expanded, canonical spelling) and the ordered
//! header list of a message.

use std::borrow::Cow;

use super::uri::split_unquoted;

/// Whether `name` is an application header, `X-…` (any case). By `get`,
/// not slicing: a name percent-decoded from a bot's target URI may put a
/// multi-byte character across byte 2.
pub fn is_x_header(name: &str) -> bool {
    name.len() > 2 && name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("x-"))
}

/// Canonical long form for a header name as received (any case, compact).
/// Runs for every header of every message: the name is lowered into a stack
/// buffer once and matched, instead of compared against each known name.
pub fn canonical_name(name: &str) -> Cow<'static, str> {
    const LONGEST: usize = 16;
    let mut lowered = [0u8; LONGEST];
    let Some(buffer) = lowered.get_mut(..name.len()) else {
        return Cow::Owned(name.to_string());
    };
    for (to, from) in buffer.iter_mut().zip(name.bytes()) {
        *to = from.to_ascii_lowercase();
    }
    let canonical = match &*buffer {
        b"i" | b"call-id" => "Call-ID",
        b"m" | b"contact" => "Contact",
        b"e" | b"content-encoding" => "Content-Encoding",
        b"l" | b"content-length" => "Content-Length",
        b"c" | b"content-type" => "Content-Type",
        b"f" | b"from" => "From",
        b"s" | b"subject" => "Subject",
        b"k" | b"supported" => "Supported",
        b"t" | b"to" => "To",
        b"v" | b"via" => "Via",
        b"o" | b"event" => "Event",
        b"r" | b"refer-to" => "Refer-To",
        b"u" | b"allow-events" => "Allow-Events",
        b"b" | b"referred-by" => "Referred-By",
        b"x" | b"session-expires" => "Session-Expires",
        b"cseq" => "CSeq",
        b"max-forwards" => "Max-Forwards",
        b"record-route" => "Record-Route",
        b"route" => "Route",
        b"www-authenticate" => "WWW-Authenticate",
        _ => return Cow::Owned(name.to_string()),
    };
    Cow::Borrowed(canonical)
}

/// Headers in the order received. Names are stored canonical; lookups ignore
/// case. Known names are stored borrowed: most headers of a message then
/// cost one allocation (the value), not two.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(Cow<'static, str>, String)>);

impl Headers {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Every value of a list header (Via, Route, Record-Route, Contact), with
    /// comma-joined values split apart.
    pub fn get_all_split<'a>(&'a self, name: &'a str) -> Vec<&'a str> {
        self.get_all(name)
            .flat_map(|value| split_unquoted(value, b','))
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .collect()
    }

    pub fn push(&mut self, name: &str, value: &str) {
        self.0.push((canonical_name(name), value.to_string()));
    }

    /// Replaces every value of `name` with one, keeping the first position.
    pub fn set(&mut self, name: &str, value: &str) {
        match self
            .0
            .iter()
            .position(|(key, _)| key.eq_ignore_ascii_case(name))
        {
            Some(index) => {
                self.0[index].1 = value.to_string();
                let mut seen = 0;
                self.0.retain(|(key, _)| {
                    if key.eq_ignore_ascii_case(name) {
                        seen += 1;
                        seen == 1
                    } else {
                        true
                    }
                });
            }
            None => self.push(name, value),
        }
    }

    /// Inserts a value before every other header (a new top Via).
    pub fn push_front(&mut self, name: &str, value: &str) {
        self.0.insert(0, (canonical_name(name), value.to_string()));
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(key, _)| !key.eq_ignore_ascii_case(name));
    }

    /// The first value of `name`, mutably.
    pub fn first_mut(&mut self, name: &str) -> Option<&mut String> {
        self.0
            .iter_mut()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .map(|(key, value)| (key.as_ref(), value.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_forms_become_canonical() {
        assert_eq!(canonical_name("v"), "Via");
        assert_eq!(canonical_name("I"), "Call-ID");
        assert_eq!(canonical_name("CALL-ID"), "Call-ID");
        assert_eq!(canonical_name("X-Custom"), "X-Custom");
        assert_eq!(canonical_name("www-AUTHENTICATE"), "WWW-Authenticate");
        assert_eq!(canonical_name("content-encoding"), "Content-Encoding");
        assert_eq!(canonical_name("Session-expires"), "Session-Expires");
        assert_eq!(
            canonical_name("x-a-much-longer-name"),
            "x-a-much-longer-name"
        );
        assert_eq!(canonical_name("ü"), "ü");
        assert!(matches!(canonical_name("cseq"), Cow::Borrowed("CSeq")));
    }

    #[test]
    fn list_values_split_outside_quotes() {
        let mut headers = Headers::new();
        headers.push(
            "v",
            "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2",
        );
        headers.push("Via", "SIP/2.0/TCP c;branch=z9hG4bK3");
        assert_eq!(headers.get_all_split("via").len(), 3);
        headers.set("Via", "only");
        assert_eq!(headers.get_all("VIA").collect::<Vec<_>>(), vec!["only"]);
    }
}
