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

/// Writes the seed of the dictionary-file decoder's corpus: a dictionary trained on small texts,
/// sealed under the fuzzing key. Run by hand when its format changes:
/// `cargo test -p rewind-store --test fuzz_corpus -- --ignored write_dict_seed`.
#[test]
#[ignore]
fn write_dict_seed() {
    use rewind_store::Hash;
    use rewind_store::format::{FUZZ_NAME, fuzzing_codec};
    let samples: Vec<Vec<u8>> = (0..400u32)
        .map(|i| format!("fn f{i}() -> Option<u32> {{ let x = Some({i}); match x {{ Some(v) => Some(v + {}), None => None }} }}\n", i * 7).repeat(1 + i as usize % 5).into_bytes())
        .collect();
    let dict = zstd::dict::from_samples(&samples, 4096).unwrap();
    let mut plain = (dict.len() as u32).to_le_bytes().to_vec();
    plain.extend_from_slice(&dict);
    plain.resize(4096_usize.max(plain.len().next_power_of_two()), 0);
    let sealed = fuzzing_codec().seal_named_for_fuzzing("dict", &Hash::from_hex(FUZZ_NAME).unwrap(), &plain);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dict-v2");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("seed"), sealed).unwrap();
}

/// Writes the seeds of the version 2 decoders' corpora: real objects sealed under the fuzzing
/// key (`format::fuzzing_codec`). Run by hand when a format changes:
/// `cargo test -p rewind-store --test fuzz_corpus -- --ignored write_v2_seeds`.
#[test]
#[ignore]
fn write_v2_seeds() {
    use rewind_store::codec::Codec;
    use rewind_store::format::{self, FUZZ_NAME, fuzzing_codec, fuzzing_raw_key};
    use rewind_store::{Hash, KdfParams, KeyFile, LockInfo, NewKey, Repository};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |name: &str, file: &str, bytes: &[u8]| {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), bytes).unwrap();
    };
    let codec: Codec = fuzzing_codec();
    let name = Hash::from_hex(FUZZ_NAME).unwrap();
    // A real repository's objects, re-sealed under the fuzzing key where they are keyed.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"some text ".repeat(500)).unwrap();
    let repo =
        Repository::init(&dir.path().join("repo"), Default::default(), Default::default(), NewKey::test()).unwrap();
    let repo = repo.open_indexed(Default::default()).unwrap();
    let opts = rewind_store::BackupOptions { paths: vec![src], host: "h".into(), ..Default::default() };
    let snap = rewind_store::backup(&repo, &opts, &Default::default(), &|_, _| ()).unwrap();
    let mut manifest = snap.snapshot.encode();
    manifest.resize(manifest.len().div_ceil(512) * 512, b' ');
    write("snapshot-v2", "seed", &codec.seal_named_for_fuzzing("snapshot", &name, &manifest));
    let mut body = Vec::new();
    body.extend_from_slice(&0u32.to_le_bytes());
    body.resize(4096, 0);
    write("index-v2", "seed-empty", &codec.seal_named_for_fuzzing("index", &name, &body));
    let config = rewind_store::Config::new(Default::default(), Default::default(), rewind_store::Encryption::Aes256Gcm);
    write("config-v2", "seed", &config.encode_sealed(codec.crypto()));
    let lock =
        LockInfo { purpose: "backup".into(), host: "h".into(), pid: 1, time: jiff::Timestamp::now(), refreshed: None };
    write("lock-v2", "seed", &codec.encode_lock("fuzz", &lock));
    let (secret, repo_id) = fuzzing_raw_key();
    let master = rewind_store::crypto::MasterKey::from_bytes(&[7u8; 96]).unwrap();
    let kf = KeyFile::wrap(&master, &repo_id, &secret, KdfParams::default()).unwrap();
    write("key", "seed", &kf.encode());
    // A pack as the packer writes it, under the fuzzing key: one blob.
    let records_pack = {
        let id = rewind_store::BlobId { kind: rewind_store::BlobKind::Data, hash: codec.id(b"blob") };
        let mut sealed = Vec::new();
        codec.seal_blob(&id, b"blob", &mut sealed);
        let start = (12 + codec.pack_head_len(1)) as u64;
        let rec = format::BlobRecord {
            id,
            compression: format::Compression::None,
            offset: start,
            stored_len: sealed.len() as u32,
            raw_len: 4,
        };
        let (head, trailer) = codec.pack_head_and_trailer(&[rec]);
        let mut pack = codec.pack_header().to_vec();
        pack.extend_from_slice(&head);
        pack.extend_from_slice(&sealed);
        pack.extend_from_slice(&trailer);
        pack
    };
    write("pack-v2", "seed", &records_pack);
}
