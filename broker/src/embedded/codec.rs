//! Compact binary encoding of headers for the log's `headers` column:
//! `count:u16`, then per header `len:u16 name len:u32 value` (big endian).

use sluice_proto::Headers;

use crate::BrokerError;

/// Encodes headers.
pub(crate) fn encode(headers: &Headers) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        16 + headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum::<usize>(),
    );
    // Header counts, names and values are bounded far below these limits by
    // every transport; saturate rather than panic on absurd input.
    let count = u16::try_from(headers.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for (name, value) in headers.iter().take(usize::from(count)) {
        let n = &name.as_bytes()[..name.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&u16::try_from(n.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(n);
        out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], BrokerError> {
    if buf.len() < n {
        return Err(BrokerError::Storage("truncated header block in log".into()));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn text(bytes: &[u8]) -> Result<&str, BrokerError> {
    std::str::from_utf8(bytes).map_err(|_| BrokerError::Storage("header is not UTF-8".into()))
}

/// Decodes headers written by [`encode`].
pub(crate) fn decode(mut buf: &[u8]) -> Result<Headers, BrokerError> {
    let count = u16::from_be_bytes([take(&mut buf, 1)?[0], take(&mut buf, 1)?[0]]);
    // The names and values are the block less its lengths: one buffer.
    let mut headers = Headers::with_capacity(usize::from(count), buf.len());
    for _ in 0..count {
        let n = take(&mut buf, 2)?;
        let nlen = usize::from(u16::from_be_bytes([n[0], n[1]]));
        let name = text(take(&mut buf, nlen)?)?;
        let v = take(&mut buf, 4)?;
        let vlen = u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize;
        let value = text(take(&mut buf, vlen)?)?;
        headers.insert(name, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn headers_round_trip() {
        let mut h = Headers::new();
        h.insert("ce-id", "0193");
        h.insert("x-empty", "");
        h.insert("x-unicode", "größe ✓");
        assert_eq!(decode(&encode(&h)).unwrap(), h);
        assert_eq!(decode(&encode(&Headers::new())).unwrap(), Headers::new());
    }

    #[test]
    fn a_truncated_block_is_an_error_not_a_panic() {
        let mut h = Headers::new();
        h.insert("ce-id", "0193");
        let bytes = encode(&h);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err());
        }
    }
}
