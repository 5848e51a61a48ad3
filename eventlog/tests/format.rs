//! The event-log format: round trips, and every kind of damage reported
//! with where it is.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use prost::Message;
use sluice_eventlog::{MAGIC, ReadError, Reader, VERSION, Writer};
use sluice_proto::sluice::v1::{CloudEvent, EventLogHeader};

fn event(i: u64) -> CloudEvent {
    CloudEvent {
        id: format!("0190c0de-0000-7000-8000-{i:012}"),
        source: "/sluice/test".into(),
        r#type: "shop.orders.v1.OrderPlaced".into(),
        subject: format!("order-{}", i % 97),
        time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + i as i64,
            nanos: 7,
        }),
        specversion: "1.0".into(),
        broker_subject: "orders.order.placed".into(),
        extensions: [("x-n".to_owned(), i.to_string())].into_iter().collect(),
        data: (0..(i % 300)).map(|b| (b * 7 % 251) as u8).collect(),
        ..CloudEvent::default()
    }
}

fn header() -> EventLogHeader {
    EventLogHeader {
        writer: "test".into(),
        source: "embedded:x".into(),
        filter: "orders.>".into(),
        ..EventLogHeader::default()
    }
}

fn file(n: u64) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), &header()).unwrap();
    for i in 0..n {
        w.append(&event(i)).unwrap();
    }
    w.finish().unwrap()
}

fn read_all(bytes: &[u8]) -> (Vec<CloudEvent>, Option<ReadError>) {
    let mut events = Vec::new();
    let reader = match Reader::new(bytes) {
        Ok(r) => r,
        Err(e) => return (events, Some(e)),
    };
    for r in reader {
        match r {
            Ok(e) => events.push(e),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

#[test]
fn events_round_trip_byte_equal_across_blocks() {
    let bytes = file(20_000);
    let reader = Reader::new(bytes.as_slice()).unwrap();
    assert_eq!(reader.header().format_version, u32::from(VERSION));
    assert_eq!(reader.header().filter, "orders.>");
    let (events, err) = read_all(&bytes);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(events.len(), 20_000);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.encode_to_vec(),
            event(i as u64).encode_to_vec(),
            "record {i}"
        );
    }
    // Several blocks, and compressed.
    let raw: usize = (0..20_000).map(|i| event(i).encoded_len() + 6).sum();
    assert!(bytes.len() < raw / 2, "{} of {raw}", bytes.len());
    // An empty log is a log too.
    let (events, err) = read_all(&file(0));
    assert!(events.is_empty() && err.is_none());
}

#[test]
fn a_truncated_file_says_how_many_records_were_intact() {
    let bytes = file(5_000);
    let header_end = 8 + 2 + 4 + header().encode_to_vec().len() + 4;
    for cut in [
        bytes.len() - 1,
        bytes.len() - 16,
        bytes.len() / 2,
        header_end + 3,
    ] {
        let (events, err) = read_all(&bytes[..cut]);
        match err {
            Some(ReadError::Truncated { records, .. }) => {
                assert_eq!(records, events.len() as u64, "cut at {cut}");
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    let (_, err) = read_all(&bytes[..12]);
    assert!(matches!(err, Some(ReadError::Header(_))), "{err:?}");
}

#[test]
fn damage_is_named_by_its_place() {
    let bytes = file(3_000);
    // A flipped byte in the first block's data: its checksum names the records.
    let mut bad = bytes.clone();
    let header_end = 8 + 2 + 4 + header().encode_to_vec().len() + 4;
    let at = header_end + 16 + 100;
    bad[at] ^= 0x40;
    let (events, err) = read_all(&bad);
    assert!(events.is_empty());
    let err = err.unwrap();
    assert!(
        matches!(err, ReadError::BlockChecksum { first: 0, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("records 0.."), "{err}");

    let mut bad = bytes.clone();
    bad[0] = b'x';
    assert!(matches!(read_all(&bad).1, Some(ReadError::Magic)));
    let mut bad = bytes.clone();
    bad[8] = 9;
    assert!(matches!(read_all(&bad).1, Some(ReadError::Version(9))));
    let mut bad = bytes.clone();
    bad[14] ^= 1; // inside the header
    assert!(matches!(read_all(&bad).1, Some(ReadError::Header(_))));
    let mut extra = bytes.clone();
    extra.push(0);
    assert!(matches!(
        read_all(&extra).1,
        Some(ReadError::Corrupt { .. })
    ));
    assert!(matches!(read_all(b"").1, Some(ReadError::Magic)));
}

/// A file written by hand, as docs/event-log-format.md describes it.
fn by_hand(records: &[(Vec<u8>, u32)]) -> Vec<u8> {
    let crc =
        |b: &[u8]| (crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, b) & 0xFFFF_FFFF) as u32;
    let h = header().encode_to_vec();
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&crc(&h).to_le_bytes());
    let mut raw = Vec::new();
    for (body, record_crc) in records {
        prost::encoding::encode_varint(body.len() as u64, &mut raw);
        raw.extend_from_slice(body);
        raw.extend_from_slice(&record_crc.to_le_bytes());
    }
    let z = zstd::bulk::compress(&raw, 3).unwrap();
    out.extend_from_slice(&(z.len() as u32).to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc(&z).to_le_bytes());
    out.extend_from_slice(&z);
    let total = (records.len() as u64).to_le_bytes();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&total);
    out.extend_from_slice(&crc(&total).to_le_bytes());
    out
}

#[test]
fn the_documented_layout_reads_and_a_bad_record_checksum_names_the_record() {
    let crc =
        |b: &[u8]| (crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, b) & 0xFFFF_FFFF) as u32;
    let a = event(1).encode_to_vec();
    let b = event(2).encode_to_vec();
    let good = by_hand(&[(a.clone(), crc(&a)), (b.clone(), crc(&b))]);
    let (events, err) = read_all(&good);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(events, vec![event(1), event(2)]);
    let bad = by_hand(&[(a.clone(), crc(&a)), (b.clone(), crc(&b) ^ 1)]);
    let (events, err) = read_all(&bad);
    assert_eq!(events.len(), 1);
    let err = err.unwrap();
    assert!(matches!(err, ReadError::RecordChecksum(1)), "{err:?}");
    assert_eq!(err.to_string(), "checksum mismatch in record 1");
}
