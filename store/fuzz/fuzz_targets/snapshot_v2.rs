//! Fuzz the snapshot-v2 decoder: any bytes give a result, never a panic (scripts/fuzz.sh snapshot-v2 SECONDS).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rewind_store::format::decode_for_fuzzing("snapshot-v2", data);
});
