//! Lower-case hex, as trace ids, digests and keys are written.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` to `out` in lower-case hex.
pub fn push(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// Writes `bytes` in lower-case hex into `out` from its start (which must
/// hold twice as many bytes; any more stay as they are).
pub fn write(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// The number `digits` (lower-case hex, at most 32 of them) spell; `None`
/// for any other byte or more digits.
pub fn parse(digits: &[u8]) -> Option<u128> {
    if digits.len() > 32 {
        return None;
    }
    digits.iter().try_fold(0u128, |n, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(d))
    })
}

/// `bytes` in lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    push(&mut out, bytes);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_byte_is_two_lower_case_digits() {
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::encode(&all), expected);
        assert_eq!(super::encode(&[]), "");
        let mut out = [b'-'; 5];
        super::write(&mut out, &[0x0f, 0xa0]);
        assert_eq!(&out, b"0fa0-");
    }

    #[test]
    fn lower_case_hex_parses_back() {
        assert_eq!(super::parse(b"0fa0"), Some(0x0fa0));
        assert_eq!(super::parse(&[b'f'; 32]), Some(u128::MAX));
        assert_eq!(super::parse(b""), Some(0));
        for bad in [&b"0A"[..], b"+1", b"g", b" 1", &[b'0'; 33]] {
            assert_eq!(super::parse(bad), None, "{bad:?}");
        }
    }
}
