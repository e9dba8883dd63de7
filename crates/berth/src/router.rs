//! `berth router`: the router process, which the server starts (and never a person) in a process
//! group of its own, so that a terminal's signals for the server (Ctrl-C) do not reach it; it
//! ignores SIGHUP and logs to `<data dir>/logs/router.log`. It stays in the server's session:
//! with the kernel's autogroup scheduling a session of its own would get one share of the CPU
//! against everything else, and its latency would suffer whenever the host is busy.

use std::path::Path;
use std::process::ExitCode;

use berth_router::control::DaemonConfig;

/// The router's log is restarted past this size (the previous one kept as `router.log.1`).
const LOG_LIMIT: u64 = 10 << 20;

pub fn main(config_path: &Path, takeover: bool) -> ExitCode {
    let config = match DaemonConfig::read(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: reading the router's configuration {}: {e}", config_path.display());
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&config) {
        eprintln!("error: opening the router's log: {e}");
        return ExitCode::FAILURE;
    }
    crate::server::raise_open_files_limit();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "starting the async runtime failed");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(berth_router::daemon::run(config, config_path, takeover)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "the router failed");
            ExitCode::FAILURE
        }
    }
}

/// Logs to `<data dir>/logs/router.log`, restarted when over [`LOG_LIMIT`].
fn init_logging(config: &DaemonConfig) -> std::io::Result<()> {
    let dir = config.data_dir.join("logs");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("router.log");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > LOG_LIMIT) {
        std::fs::rename(&path, dir.join("router.log.1"))?;
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::sync::Mutex::new(file)).with_ansi(false);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}
