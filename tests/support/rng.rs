//! The one seeded generator of the tests: ChaCha8 (`rand_chacha`), whose stream is fixed by the
//! algorithm and the seed, not by the `rand` version, so a seed names the same bytes on every
//! machine and after every dependency update. The demo and the catalog's unit tests and
//! benchmark use the same generator.

pub use rand::{Rng, RngCore, SeedableRng};

/// The tests' generator.
pub type TestRng = rand_chacha::ChaCha8Rng;

/// A generator for `seed`.
pub fn seeded(seed: u64) -> TestRng {
    TestRng::seed_from_u64(seed)
}

/// `n` deterministic, incompressible bytes.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; n];
    seeded(seed).fill_bytes(&mut out);
    out
}
