//! rewind-portal (skeleton; see the issue).
