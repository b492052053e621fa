//! Bounded text for error messages and logs: what a peer sends must not
//! grow a log line or a transcript without limit.

/// How much of an error reply goes into the error message.
const ERROR_SNIPPET_CHARS: usize = 200;

/// The error and its causes: reqwest's own message ("error sending request")
/// hides the interesting part (connection refused, DNS, TLS).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The start of an error body on one line, for the error message.
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = out.char_indices().nth(ERROR_SNIPPET_CHARS) {
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Append as much of `add` as fits in `cap` bytes, on a char boundary.
pub(crate) fn push_capped(text: &mut String, add: &str, cap: usize) {
    let room = cap.saturating_sub(text.len());
    if add.len() <= room {
        text.push_str(add);
        return;
    }
    let mut cut = room;
    while !add.is_char_boundary(cut) {
        cut -= 1;
    }
    text.push_str(&add[..cut]);
}
