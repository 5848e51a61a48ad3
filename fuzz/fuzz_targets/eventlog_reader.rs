//! The event-log reader on arbitrary bytes: it must return errors, never
//! panic, hang or allocate without bound.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(reader) = sluice_eventlog::Reader::new(data) {
        for record in reader {
            if record.is_err() {
                break;
            }
        }
    }
});
