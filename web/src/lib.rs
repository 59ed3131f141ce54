//! The restore portal's pages: plain HTML, CSS and JavaScript in `web/assets/`, embedded in the
//! binary with `include_bytes!` (no Node toolchain, no CDN, works offline). The portal serves
//! them for any path that is not an API route ([`asset`]).
//!
//! Invariants:
//! - **No inline script or style**: every page answers with [`CSP`], which allows script and
//!   style from the portal's own files only and forbids framing.
//! - **User data is text**: the scripts put names, paths and reasons into the page with
//!   `textContent` only, never as HTML.
//! - The front end is a single page with `#/` routes, so a typed or bookmarked link always loads
//!   `index.html` and then asks the API, which decides what the user may see.

/// The Content-Security-Policy of every asset.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const INDEX: &[u8] = include_bytes!("../assets/index.html");
const APP_JS: &[u8] = include_bytes!("../assets/app.js");
const STYLE: &[u8] = include_bytes!("../assets/style.css");
const ICON: &[u8] = include_bytes!("../assets/icon.svg");
const FOLDER: &[u8] = include_bytes!("../assets/i/folder.svg");
const FILE: &[u8] = include_bytes!("../assets/i/file.svg");
const IMAGE: &[u8] = include_bytes!("../assets/i/image.svg");
const LINK: &[u8] = include_bytes!("../assets/i/link.svg");

/// The asset at a URL path: its bytes and content type. `/` is the page itself; unknown paths
/// are `None` (the portal answers 404).
pub fn asset(path: &str) -> Option<(&'static [u8], &'static str)> {
    Some(match path {
        "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/style.css" => (STYLE, "text/css; charset=utf-8"),
        "/icon.svg" => (ICON, "image/svg+xml"),
        "/i/folder.svg" => (FOLDER, "image/svg+xml"),
        "/i/file.svg" => (FILE, "image/svg+xml"),
        "/i/image.svg" => (IMAGE, "image/svg+xml"),
        "/i/link.svg" => (LINK, "image/svg+xml"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_served_and_nothing_else() {
        assert_eq!(asset("/").unwrap().1, "text/html; charset=utf-8");
        assert!(asset("/app.js").is_some() && asset("/style.css").is_some());
        assert!(asset("/api/me").is_none() && asset("/../Cargo.toml").is_none());
    }

    #[test]
    fn no_inline_script_or_style_in_the_page() {
        let html = std::str::from_utf8(INDEX).unwrap();
        assert!(!html.contains("<script>") && !html.contains("style="), "inline script or style in index.html");
        assert!(!html.contains("onclick") && !html.contains("javascript:"));
        let js = std::str::from_utf8(APP_JS).unwrap();
        // User data goes in as text only.
        assert!(!js.contains("innerHTML") && !js.contains("insertAdjacentHTML") && !js.contains("document.write"));
        assert!(CSP.contains("frame-ancestors 'none'") && !CSP.contains("unsafe"));
    }
}
