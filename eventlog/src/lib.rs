//! Event-log files (`*.sluice`): whole events (`sluice.v1.CloudEvent`:
//! attributes, broker subject, other headers, payload) in the order they
//! were read, with a header, per-record CRC32C checksums, and zstd blocks.
//! The format is specified in `docs/event-log-format.md`:
//!
//! ```text
//! file    = magic version header block* end
//! magic   = 89 53 4C 55 49 43 45 0A          ("\x89SLUICE\n")
//! version = u16 LE                           (1)
//! header  = u32 LE length, EventLogHeader, u32 LE CRC32C of it
//! block   = u32 LE compressed length (> 0), u32 LE raw length,
//!           u32 LE record count, u32 LE CRC32C of the compressed bytes,
//!           zstd frame of the raw bytes
//! raw     = ( varint length, CloudEvent, u32 LE CRC32C of it )*
//! end     = u32 0, u32 0, u64 LE total records, u32 LE CRC32C of those 8 bytes
//! ```
//!
//! [`Reader`] never trusts a length: every one is bounded before anything
//! is allocated, a bad checksum names the record (or block) it covers, and a
//! file that ends before its end marker is reported as truncated, with the
//! number of records read intact.

pub mod convert;

use std::io::{Read, Write};

use prost::Message;
use sluice_proto::sluice::v1::{CloudEvent, EventLogHeader};

/// The first bytes of every event-log file.
pub const MAGIC: [u8; 8] = *b"\x89SLUICE\n";
/// The format version this crate writes and reads.
pub const VERSION: u16 = 1;
/// Largest header, block (raw or compressed) and record accepted.
pub const MAX_HEADER: u32 = 1 << 20;
/// Largest block, raw or compressed.
pub const MAX_BLOCK: u32 = 64 << 20;
/// Largest record.
pub const MAX_RECORD: u32 = 16 << 20;
/// Raw bytes a writer gathers before it compresses a block.
pub const BLOCK_TARGET: usize = 1 << 20;
/// zstd level of the blocks (fast; event payloads compress well anyway).
pub const ZSTD_LEVEL: i32 = 3;

fn crc32c(bytes: &[u8]) -> u32 {
    // CRC-32C is 32 bits wide; the library returns it in a u64.
    (crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) & 0xFFFF_FFFF) as u32
}

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The output failed.
    #[error("cannot write the event log: {0}")]
    Io(#[from] std::io::Error),
    /// One record is larger than [`MAX_RECORD`].
    #[error("record {index} is {size} bytes; at most {MAX_RECORD} fit in an event log")]
    RecordTooLarge {
        /// The record's index (from 0).
        index: u64,
        /// Its encoded size.
        size: usize,
    },
}

/// Why a file could not be read; each names where it went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The input failed.
    #[error("cannot read the event log: {0}")]
    Io(#[from] std::io::Error),
    /// Not an event-log file.
    #[error("not a Sluice event log (the file does not start with its magic bytes)")]
    Magic,
    /// A version this reader does not know.
    #[error("event-log format version {0} is not supported (this reader knows version {VERSION})")]
    Version(u16),
    /// The header is damaged.
    #[error("the event log's header is damaged: {0}")]
    Header(String),
    /// The file ends early.
    #[error("the event log is truncated after record {records} (byte {offset}): {what}")]
    Truncated {
        /// Records read intact before the end.
        records: u64,
        /// Where the file ended.
        offset: u64,
        /// What was expected there.
        what: &'static str,
    },
    /// A block's checksum does not match its bytes.
    #[error("checksum mismatch in the block of records {first}..{end} (byte {offset})")]
    BlockChecksum {
        /// Its first record's index.
        first: u64,
        /// One past its last record's index.
        end: u64,
        /// Where the block starts.
        offset: u64,
    },
    /// A record's checksum does not match its bytes.
    #[error("checksum mismatch in record {0}")]
    RecordChecksum(u64),
    /// A length or count is beyond the format's limits or inconsistent.
    #[error("the event log is corrupt at record {record} (byte {offset}): {what}")]
    Corrupt {
        /// The record being read.
        record: u64,
        /// Where.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

/// Writes an event-log file: the header at once, records gathered into
/// blocks, the end marker on [`Writer::finish`] (without it, readers report
/// the file as truncated).
pub struct Writer<W: Write> {
    out: W,
    raw: Vec<u8>,
    in_block: u32,
    written: u64,
}

impl<W: Write> std::fmt::Debug for Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<W: Write> Writer<W> {
    /// Starts a file on `out` with `header` (its version is set here).
    ///
    /// # Errors
    /// The output failed.
    pub fn new(mut out: W, header: &EventLogHeader) -> Result<Self, WriteError> {
        let mut header = header.clone();
        header.format_version = u32::from(VERSION);
        let bytes = header.encode_to_vec();
        out.write_all(&MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&len32(bytes.len()).to_le_bytes())?;
        out.write_all(&bytes)?;
        out.write_all(&crc32c(&bytes).to_le_bytes())?;
        Ok(Self {
            out,
            raw: Vec::with_capacity(BLOCK_TARGET + (64 << 10)),
            in_block: 0,
            written: 0,
        })
    }

    /// Appends one event.
    ///
    /// # Errors
    /// The record is too large, or the output failed.
    pub fn append(&mut self, event: &CloudEvent) -> Result<(), WriteError> {
        let size = event.encoded_len();
        if size > MAX_RECORD as usize {
            return Err(WriteError::RecordTooLarge {
                index: self.written,
                size,
            });
        }
        if !self.raw.is_empty() && self.raw.len() + size + 16 > MAX_BLOCK as usize {
            self.flush_block()?;
        }
        let start = self.raw.len();
        prost::encoding::encode_varint(size as u64, &mut self.raw);
        let body = self.raw.len();
        event
            .encode(&mut self.raw)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let crc = crc32c(&self.raw[body..]);
        self.raw.extend_from_slice(&crc.to_le_bytes());
        debug_assert!(self.raw.len() > start);
        self.in_block += 1;
        self.written += 1;
        if self.raw.len() >= BLOCK_TARGET {
            self.flush_block()?;
        }
        Ok(())
    }

    /// Records appended so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn flush_block(&mut self) -> Result<(), WriteError> {
        if self.raw.is_empty() {
            return Ok(());
        }
        let compressed = zstd::bulk::compress(&self.raw, ZSTD_LEVEL)?;
        self.out.write_all(&len32(compressed.len()).to_le_bytes())?;
        self.out.write_all(&len32(self.raw.len()).to_le_bytes())?;
        self.out.write_all(&self.in_block.to_le_bytes())?;
        self.out.write_all(&crc32c(&compressed).to_le_bytes())?;
        self.out.write_all(&compressed)?;
        self.raw.clear();
        self.in_block = 0;
        Ok(())
    }

    /// Writes the last block and the end marker; the output, flushed.
    ///
    /// # Errors
    /// The output failed.
    pub fn finish(mut self) -> Result<W, WriteError> {
        self.flush_block()?;
        let total = self.written.to_le_bytes();
        self.out.write_all(&0_u32.to_le_bytes())?;
        self.out.write_all(&0_u32.to_le_bytes())?;
        self.out.write_all(&total)?;
        self.out.write_all(&crc32c(&total).to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A length as the format's u32 (callers bound lengths first).
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Reads an event-log file record by record ([`Iterator`] of events).
pub struct Reader<R: Read> {
    input: R,
    header: EventLogHeader,
    offset: u64,
    records: u64,
    raw: Vec<u8>,
    pos: usize,
    left_in_block: u32,
    block_first: u64,
    done: bool,
}

impl<R: Read> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Reader<R> {
    /// Opens a file: checks the magic bytes, the version and the header.
    ///
    /// # Errors
    /// Not an event log, an unknown version, or a damaged header.
    pub fn new(mut input: R) -> Result<Self, ReadError> {
        let mut magic = [0_u8; 8];
        if read_full(&mut input, &mut magic)? != magic.len() || magic != MAGIC {
            return Err(ReadError::Magic);
        }
        let mut v = [0_u8; 2];
        if read_full(&mut input, &mut v)? != 2 {
            return Err(ReadError::Header("no version".into()));
        }
        let version = u16::from_le_bytes(v);
        if version != VERSION {
            return Err(ReadError::Version(version));
        }
        let len = read_u32(&mut input)
            .map_err(|_| ReadError::Header("no header length".into()))?
            .ok_or_else(|| ReadError::Header("no header length".into()))?;
        if len > MAX_HEADER {
            return Err(ReadError::Header(format!("{len} bytes is too long")));
        }
        let mut bytes = vec![0_u8; len as usize];
        if read_full(&mut input, &mut bytes)? != bytes.len() {
            return Err(ReadError::Header("it is cut short".into()));
        }
        let crc = read_u32(&mut input)?.ok_or_else(|| ReadError::Header("no checksum".into()))?;
        if crc != crc32c(&bytes) {
            return Err(ReadError::Header("checksum mismatch".into()));
        }
        let header = EventLogHeader::decode(bytes.as_slice())
            .map_err(|e| ReadError::Header(e.to_string()))?;
        Ok(Self {
            input,
            header,
            offset: 8 + 2 + 4 + u64::from(len) + 4,
            records: 0,
            raw: Vec::new(),
            pos: 0,
            left_in_block: 0,
            block_first: 0,
            done: false,
        })
    }

    /// The file's header.
    pub fn header(&self) -> &EventLogHeader {
        &self.header
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    fn truncated(&self, what: &'static str) -> ReadError {
        ReadError::Truncated {
            records: self.records,
            offset: self.offset,
            what,
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> ReadError {
        ReadError::Corrupt {
            record: self.records,
            offset: self.offset,
            what: what.into(),
        }
    }

    fn u32_field(&mut self, what: &'static str) -> Result<u32, ReadError> {
        let v = read_u32(&mut self.input)?.ok_or_else(|| self.truncated(what))?;
        self.offset += 4;
        Ok(v)
    }

    /// Loads the next block; `false` at the end marker.
    fn next_block(&mut self) -> Result<bool, ReadError> {
        let start = self.offset;
        let compressed_len = self.u32_field("a block header")?;
        let raw_len = self.u32_field("a block header")?;
        if compressed_len == 0 {
            if raw_len != 0 {
                return Err(self.corrupt("an end marker with a raw length"));
            }
            let mut total = [0_u8; 8];
            if read_full(&mut self.input, &mut total)? != 8 {
                return Err(self.truncated("the end marker"));
            }
            self.offset += 8;
            let crc = self.u32_field("the end marker")?;
            if crc != crc32c(&total) {
                return Err(self.corrupt("the end marker's checksum does not match"));
            }
            let total = u64::from_le_bytes(total);
            if total != self.records {
                return Err(self.corrupt(format!(
                    "the end marker counts {total} records, the file holds {}",
                    self.records
                )));
            }
            let mut extra = [0_u8; 1];
            if read_full(&mut self.input, &mut extra)? != 0 {
                return Err(self.corrupt("bytes after the end marker"));
            }
            return Ok(false);
        }
        let count = self.u32_field("a block header")?;
        let crc = self.u32_field("a block header")?;
        if compressed_len > MAX_BLOCK || raw_len > MAX_BLOCK {
            return Err(self.corrupt(format!(
                "a block of {compressed_len} compressed / {raw_len} raw bytes is beyond the limit ({MAX_BLOCK})"
            )));
        }
        if count == 0 || u64::from(count) * 5 > u64::from(raw_len) {
            return Err(self.corrupt(format!(
                "a block of {raw_len} bytes cannot hold {count} records"
            )));
        }
        let mut compressed = vec![0_u8; compressed_len as usize];
        if read_full(&mut self.input, &mut compressed)? != compressed.len() {
            return Err(self.truncated("a block's bytes"));
        }
        self.offset += u64::from(compressed_len);
        let end = self.records + u64::from(count);
        if crc != crc32c(&compressed) {
            return Err(ReadError::BlockChecksum {
                first: self.records,
                end,
                offset: start,
            });
        }
        self.raw = zstd::bulk::decompress(&compressed, raw_len as usize)
            .map_err(|e| self.corrupt(format!("a block does not decompress: {e}")))?;
        if self.raw.len() != raw_len as usize {
            return Err(self.corrupt("a block's raw length does not match"));
        }
        self.pos = 0;
        self.left_in_block = count;
        self.block_first = self.records;
        Ok(true)
    }

    fn next_record(&mut self) -> Result<Option<CloudEvent>, ReadError> {
        if self.done {
            return Ok(None);
        }
        while self.left_in_block == 0 {
            if self.pos != self.raw.len() {
                return Err(self.corrupt("a block holds more bytes than its records"));
            }
            if !self.next_block()? {
                self.done = true;
                return Ok(None);
            }
        }
        let mut rest = &self.raw[self.pos..];
        let before = rest.len();
        let len = prost::encoding::decode_varint(&mut rest)
            .map_err(|_| self.corrupt("a record's length is not a varint"))?;
        if len > u64::from(MAX_RECORD) || (len as usize).saturating_add(4) > rest.len() {
            return Err(self.corrupt(format!("a record of {len} bytes does not fit its block")));
        }
        let len = len as usize;
        let body = &rest[..len];
        let crc = u32::from_le_bytes([rest[len], rest[len + 1], rest[len + 2], rest[len + 3]]);
        if crc != crc32c(body) {
            return Err(ReadError::RecordChecksum(self.records));
        }
        let event = CloudEvent::decode(body)
            .map_err(|e| self.corrupt(format!("a record does not decode: {e}")))?;
        self.pos += before - rest.len() + len + 4;
        self.left_in_block -= 1;
        self.records += 1;
        Ok(Some(event))
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = Result<CloudEvent, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_record() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                // One error ends the file: what follows cannot be trusted.
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Reads until `buf` is full or the input ends; the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A u32 LE, or `None` when the input ends first.
fn read_u32(input: &mut impl Read) -> std::io::Result<Option<u32>> {
    let mut b = [0_u8; 4];
    Ok((read_full(input, &mut b)? == 4).then(|| u32::from_le_bytes(b)))
}
