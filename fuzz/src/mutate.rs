//! Byte-level mutations, a few stacked per input: what a broken or hostile
//! peer sends is mostly a valid message with something wrong in it.

use rand::Rng;

/// Largest input the mutator builds; the SIP stream cap is 64 KiB and
/// bigger inputs only slow the run down.
const MAX_INPUT: usize = 70 * 1024;

/// Writes into `out` a mutation of `base` (sometimes spliced with `other`,
/// sometimes with `dictionary` tokens inserted).
pub fn mutate(
    rng: &mut impl Rng,
    base: &[u8],
    other: &[u8],
    dictionary: &[&str],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(base);
    let rounds = 1 + rng.random_range(0..4) * rng.random_range(0..3);
    for _ in 0..rounds {
        match rng.random_range(0..10) {
            0 => flip_bit(rng, out),
            1 => set_byte(rng, out),
            2 => delete_range(rng, out),
            3 => duplicate_range(rng, out),
            4 => splice(rng, out, other),
            5 | 6 if !dictionary.is_empty() => {
                let token = dictionary[rng.random_range(0..dictionary.len())];
                let at = rng.random_range(0..=out.len());
                out.splice(at..at, token.bytes());
            }
            7 => {
                let at = rng.random_range(0..=out.len());
                out.truncate(at);
            }
            8 => interesting_number(rng, out),
            _ => set_byte(rng, out),
        }
        out.truncate(MAX_INPUT);
    }
}

fn flip_bit(rng: &mut impl Rng, out: &mut [u8]) {
    if !out.is_empty() {
        let at = rng.random_range(0..out.len());
        out[at] ^= 1 << rng.random_range(0..8);
    }
}

fn set_byte(rng: &mut impl Rng, out: &mut [u8]) {
    if !out.is_empty() {
        let at = rng.random_range(0..out.len());
        out[at] = *[
            0u8, 0xff, b'\r', b'\n', b' ', b':', b';', b'"', b'<', b'\\', b'=', b'0',
        ]
        .get(rng.random_range(0..13))
        .unwrap_or(&rng.random());
    }
}

fn delete_range(rng: &mut impl Rng, out: &mut Vec<u8>) {
    if !out.is_empty() {
        let start = rng.random_range(0..out.len());
        let end = (start + rng.random_range(1..64)).min(out.len());
        out.drain(start..end);
    }
}

fn duplicate_range(rng: &mut impl Rng, out: &mut Vec<u8>) {
    if !out.is_empty() {
        let start = rng.random_range(0..out.len());
        let end = (start + rng.random_range(1..256)).min(out.len());
        let piece = out[start..end].to_vec();
        let times = 1 + rng.random_range(0..8);
        let at = rng.random_range(0..=out.len());
        for _ in 0..times {
            out.splice(at..at, piece.iter().copied());
        }
    }
}

fn splice(rng: &mut impl Rng, out: &mut Vec<u8>, other: &[u8]) {
    if other.is_empty() {
        return;
    }
    let from = rng.random_range(0..other.len());
    let to = (from + rng.random_range(1..512)).min(other.len());
    let at = rng.random_range(0..=out.len());
    out.truncate(at.max(out.len() / 2));
    out.extend_from_slice(&other[from..to]);
}

/// Replaces a run of ASCII digits with a number parsers choke on.
fn interesting_number(rng: &mut impl Rng, out: &mut Vec<u8>) {
    let digits: Vec<usize> = (0..out.len())
        .filter(|&i| out[i].is_ascii_digit())
        .collect();
    if digits.is_empty() {
        return;
    }
    let start = digits[rng.random_range(0..digits.len())];
    let end = (start..out.len())
        .find(|&i| !out[i].is_ascii_digit())
        .unwrap_or(out.len());
    let numbers = [
        "0",
        "-1",
        "4294967295",
        "4294967296",
        "18446744073709551616",
        "99999999999999999999999",
        "65535",
        "65536",
        "2147483648",
    ];
    let number = numbers[rng.random_range(0..numbers.len())];
    out.splice(start..end, number.bytes());
}
