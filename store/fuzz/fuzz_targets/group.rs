//! Fuzz the decoding of groups of small blobs (repository version 4): a group's zstd frame and
//! the table of its members; any bytes give a result, never a panic (scripts/fuzz.sh group
//! SECONDS).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rewind_store::format::decode_for_fuzzing("group", data);
});
