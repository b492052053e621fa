//! The torture corpus (tests/torture/*.sip) against the parser: names say
//! what must happen. `NN_valid_*` parse; `NN_invalid400_*` fail and can be
//! answered with a stateless 400; `NN_invalid_noreply_*` fail and must not
//! be answered (no Via/Call-ID to address a response, an ACK, a response).
//! Every truncation and a sweep of byte flips of every file must not panic.

use std::path::PathBuf;

use switchboard_gateway::sip::framing::{
    bad_request, parse_datagram, parse_message, Datagram, StreamDecoder, MAX_MESSAGE,
};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/torture");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "sip"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn corpus_outcomes_match_their_names() {
    let files = corpus();
    assert!(files.len() >= 30);
    for (name, bytes) in files {
        let parsed = parse_message(&bytes);
        if name.contains("_valid_") {
            assert!(parsed.is_ok(), "{name} should parse: {:?}", parsed.err());
            continue;
        }
        let error = parsed
            .err()
            .unwrap_or_else(|| panic!("{name} should be rejected"));
        let response = error
            .partial
            .as_ref()
            .and_then(|p| bad_request(p, &error.reason));
        if name.contains("invalid400") {
            let response =
                response.unwrap_or_else(|| panic!("{name}: no 400 possible ({})", error.reason));
            let text = String::from_utf8(response).unwrap();
            assert!(text.starts_with("SIP/2.0 400 Bad Request\r\n"), "{name}");
            assert!(
                text.contains("\r\nWarning: 399 switchboard \""),
                "{name}: 400 says why"
            );
            assert!(
                text.contains("\r\nCall-ID: torture-"),
                "{name}: 400 carries the Call-ID"
            );
        } else {
            assert!(
                response.is_none(),
                "{name} must not be answered ({})",
                error.reason
            );
        }
    }
}

#[test]
fn no_input_derived_from_the_corpus_panics() {
    for (_, bytes) in corpus() {
        for cut in 0..bytes.len().min(2000) {
            let _ = parse_datagram(&bytes[..cut]);
        }
        for index in (0..bytes.len()).step_by(3) {
            for flip in [0x01u8, 0x20, 0x80, 0xff] {
                let mut mutated = bytes.clone();
                mutated[index] ^= flip;
                if let Datagram::Malformed(error) = parse_datagram(&mutated) {
                    if let Some(partial) = &error.partial {
                        let _ = bad_request(partial, &error.reason);
                    }
                }
                let mut decoder = StreamDecoder::new(MAX_MESSAGE);
                decoder.extend(&mutated);
                decoder.extend(&mutated);
                let mut guard = 0;
                while decoder.next().is_some() {
                    guard += 1;
                    assert!(guard < 1000, "decoder loops");
                }
            }
        }
    }
}
