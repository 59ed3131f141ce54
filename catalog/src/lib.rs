//! rewind-catalog (skeleton; see the issue).
