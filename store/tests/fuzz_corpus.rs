//! Every file of the fuzzers' corpora (`store/fuzz/corpus/<decoder>/`, grown by
//! `scripts/fuzz.sh`) goes through its decoder: none may panic, and the seed files written by
//! rewind itself must decode.

use rewind_store::format::{DECODERS, decode_for_fuzzing};

#[test]
fn corpora_replay_through_their_decoders() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut total = 0;
    for name in DECODERS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut accepted = 0;
        let mut files = 0;
        for e in entries {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            if decode_for_fuzzing(name, &bytes) {
                accepted += 1;
            }
            files += 1;
        }
        assert!(files > 0, "the {name} corpus is empty");
        assert!(accepted > 0, "no file of the {name} corpus decodes: the seeds are stale");
        total += files;
    }
    assert!(total >= DECODERS.len());
}
