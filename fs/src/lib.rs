//! rewind-fs (skeleton; see the issue).
