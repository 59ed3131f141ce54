//! Fuzz the tree decoder: any bytes give a result, never a panic (scripts/fuzz.sh tree SECONDS).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rewind_store::format::decode_for_fuzzing("tree", data);
});
