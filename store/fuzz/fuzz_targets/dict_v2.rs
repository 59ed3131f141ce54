//! Fuzz the dictionary-file decoder (version 3 repositories) and zstd's parsing of what it
//! yields: any bytes give a result, never a panic (scripts/fuzz.sh dict-v2 SECONDS).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rewind_store::format::decode_for_fuzzing("dict-v2", data);
});
