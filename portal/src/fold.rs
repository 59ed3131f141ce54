//! Text compared the way people, directories and case-insensitive file systems compare it:
//! Unicode's compatibility caseless match (D146), so that `DAVE`, `ｄａｖｅ` (fullwidth) and
//! `𝐝𝐚𝐯𝐞` (mathematical bold) are one, as are `Report.txt` and `report.txt`. Login names
//! ([`crate::auth::fold_login`]) and zip entry names (`download`) are keyed by it.

use caseless::Caseless;
use unicode_normalization::UnicodeNormalization;

/// The key of `s` for the compatibility caseless match: NFKD(toCasefold(NFKD(toCasefold(NFD(s))))),
/// composed (NFKC) so that keys are short.
pub(crate) fn caseless(s: &str) -> String {
    s.chars().nfd().default_case_fold().nfkd().default_case_fold().nfkd().nfc().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatibility_caseless_keys() {
        for s in ["\u{ff44}\u{ff41}\u{ff56}\u{ff45}", "\u{1d41d}\u{1d41a}\u{1d42f}\u{1d41e}", "\u{24d3}ave", "DaVe"] {
            assert_eq!(caseless(s), "dave", "{s:?}");
        }
        assert_eq!(caseless("Straße"), caseless("STRASSE"));
        assert_eq!(caseless("A\u{30a}"), caseless("\u{c5}"), "canonically equivalent");
        assert_eq!(caseless(" x "), " x ", "spaces are kept");
        assert_ne!(caseless("dave"), caseless("dove"));
    }
}
