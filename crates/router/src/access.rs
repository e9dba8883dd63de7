//! The access log: one JSON object per request, appended to a file by a background task so the
//! request path never waits on the disk, nor wakes the writer for each request: the writer
//! takes what arrived within [`GATHER`] of the first record in one write. When the writer falls behind, records are dropped and
//! counted rather than queued without bound. The file is rotated at [`ROTATE_BYTES`] (one old
//! file kept, `<name>.1`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

const ROTATE_BYTES: u64 = 64 << 20;
const BACKLOG: usize = 8192;
/// How long the writer gathers records after the first one before it writes them: at most one
/// wake-up and one write per this long, however many requests.
const GATHER: std::time::Duration = std::time::Duration::from_millis(50);

/// One request, as the access log records it, written when its answer has been sent in full,
/// has failed, or was abandoned by the client.
#[derive(Debug, Serialize)]
pub struct AccessRecord {
    /// When the exchange ended.
    pub ts: String,
    pub service: String,
    pub host: String,
    pub method: String,
    pub path: String,
    pub protocol: &'static str,
    pub status: u16,
    /// How the exchange ended: `ok`, `client_gone` (the client left before the answer ended),
    /// `upstream_error` (the instance failed while answering), `timeout` (the request timeout
    /// cut the answer) or `upgraded` (a protocol switch, e.g. a WebSocket).
    pub outcome: &'static str,
    /// Milliseconds from arrival to the response head.
    pub ttfb_ms: f64,
    /// Milliseconds from arrival to the end of the exchange.
    pub duration_ms: f64,
    /// Request body bytes passed to the instance.
    pub bytes_in: u64,
    /// Response body bytes passed to the client.
    pub bytes_out: u64,
    pub upstream: Option<String>,
    /// The instance and revision that answered, when the router knows them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    pub request_id: String,
    pub client: String,
}

#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Appends to `path` (created with its directory); must be called inside a Tokio runtime.
    pub fn open(path: &Path) -> std::io::Result<AccessLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = mpsc::channel(BACKLOG);
        tokio::spawn(write_lines(path.to_owned(), file, rx));
        Ok(AccessLog { tx, dropped: Arc::new(AtomicU64::new(0)) })
    }

    pub(crate) fn record(&self, rec: &AccessRecord) {
        let Ok(mut line) = serde_json::to_string(rec) else { return };
        line.push('\n');
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn write_lines(path: PathBuf, file: std::fs::File, mut rx: mpsc::Receiver<String>) {
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = std::io::BufWriter::with_capacity(64 << 10, file);
    while let Some(first) = rx.recv().await {
        tokio::time::sleep(GATHER).await;
        let mut line = Some(first);
        while let Some(l) = line.take().or_else(|| rx.try_recv().ok()) {
            size += l.len() as u64;
            let _ = out.write_all(l.as_bytes());
        }
        let _ = out.flush();
        if size >= ROTATE_BYTES {
            let _ = std::fs::rename(&path, path.with_extension("log.1"));
            match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                Ok(f) => {
                    out = std::io::BufWriter::with_capacity(64 << 10, f);
                    size = 0;
                }
                Err(e) => tracing::warn!(error = %e, path = %path.display(), "reopening the access log failed"),
            }
        }
    }
}
