//! The ingest parser: a request body as a single call and as a batch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zdmap::serve::ingest::{Endpoint, body_write_key, events};

fuzz_target!(init: zdmap_fuzz::catch_stack_overflows(), |data: &[u8]| {
    let _ = body_write_key(data);
    for endpoint in [Endpoint::Single("track"), Endpoint::Batch] {
        let _ = events(endpoint, data, "2026-01-01T00:00:00.000Z");
    }
});
