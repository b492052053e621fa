//! Header names (compact forms expanded, canonical spelling) and the ordered
//! header list of a message.

use super::uri::split_unquoted;

/// Canonical long form for a header name as received (any case, compact).
pub fn canonical_name(name: &str) -> String {
    let known = [
        ("i", "Call-ID"),
        ("call-id", "Call-ID"),
        ("m", "Contact"),
        ("contact", "Contact"),
        ("e", "Content-Encoding"),
        ("content-encoding", "Content-Encoding"),
        ("l", "Content-Length"),
        ("content-length", "Content-Length"),
        ("c", "Content-Type"),
        ("content-type", "Content-Type"),
        ("f", "From"),
        ("from", "From"),
        ("s", "Subject"),
        ("subject", "Subject"),
        ("k", "Supported"),
        ("supported", "Supported"),
        ("t", "To"),
        ("to", "To"),
        ("v", "Via"),
        ("via", "Via"),
        ("o", "Event"),
        ("event", "Event"),
        ("r", "Refer-To"),
        ("refer-to", "Refer-To"),
        ("u", "Allow-Events"),
        ("allow-events", "Allow-Events"),
        ("b", "Referred-By"),
        ("referred-by", "Referred-By"),
        ("x", "Session-Expires"),
        ("session-expires", "Session-Expires"),
        ("cseq", "CSeq"),
        ("max-forwards", "Max-Forwards"),
        ("record-route", "Record-Route"),
        ("route", "Route"),
        ("www-authenticate", "WWW-Authenticate"),
    ];
    // Compared without lowering a copy: this runs for every header of
    // every message.
    known
        .iter()
        .find(|(alias, _)| alias.len() == name.len() && alias.eq_ignore_ascii_case(name))
        .map(|(_, canonical)| canonical.to_string())
        .unwrap_or_else(|| name.to_string())
}

/// Headers in the order received. Names are stored canonical; lookups ignore
/// case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

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
            .flat_map(|value| split_unquoted(value, ','))
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
            .map(|(key, value)| (key.as_str(), value.as_str()))
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
