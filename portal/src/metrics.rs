//! Counters for `/metrics`, in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub responses_2xx: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub responses_5xx: AtomicU64,
    pub logins_ok: AtomicU64,
    pub logins_failed: AtomicU64,
    pub logins_throttled: AtomicU64,
    pub logins_unavailable: AtomicU64,
    pub downloads: AtomicU64,
    pub archives: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub streams_active: AtomicU64,
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut c = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(
                s,
                "# HELP rewind_portal_{name} {help}\n# TYPE rewind_portal_{name} {kind}\nrewind_portal_{name} {v}"
            );
        };
        c("requests_total", "HTTP requests received.", "counter", self.requests.load(Relaxed));
        c("responses_2xx_total", "Responses with a 2xx status.", "counter", self.responses_2xx.load(Relaxed));
        c("responses_4xx_total", "Responses with a 4xx status.", "counter", self.responses_4xx.load(Relaxed));
        c("responses_5xx_total", "Responses with a 5xx status.", "counter", self.responses_5xx.load(Relaxed));
        c("logins_ok_total", "Successful logins.", "counter", self.logins_ok.load(Relaxed));
        c("logins_failed_total", "Failed logins.", "counter", self.logins_failed.load(Relaxed));
        c(
            "logins_throttled_total",
            "Logins refused by the failure throttle.",
            "counter",
            self.logins_throttled.load(Relaxed),
        );
        c(
            "logins_unavailable_total",
            "Logins refused because a directory was down.",
            "counter",
            self.logins_unavailable.load(Relaxed),
        );
        c("downloads_total", "File downloads started.", "counter", self.downloads.load(Relaxed));
        c("archives_total", "Zip archives started.", "counter", self.archives.load(Relaxed));
        c("bytes_sent_total", "File and archive bytes sent.", "counter", self.bytes_sent.load(Relaxed));
        c("streams_active", "Downloads and archives being sent now.", "gauge", self.streams_active.load(Relaxed));
        s
    }
}
