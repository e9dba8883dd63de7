//! Custom rotators: an executable of the operator's, what a rotation Lambda is to Secrets
//! Manager. berth runs it once per step with the step's name as its one argument
//! (`create_secret`, `set_secret`, `test_secret`, `finish_secret`) and a JSON document on
//! standard input:
//!
//! ```json
//! {"step":"set_secret","secret":"api-key","version":"…","strategy":"single-user",
//!  "current":"…","pending":"…","admin":null}
//! ```
//!
//! Values travel on standard input only (never in arguments or the environment, which other
//! users of the host can read). `create_secret` prints the new value on standard output; every
//! step exits 0 when it succeeded. Otherwise the end of its standard error — with any value it
//! was given taken out — is the reason recorded on the secret. A step may run more than once
//! (after a crash or a failure), so each should check before it acts.

use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{RotationConfig, StepInput, Strategy, STEP_TIMEOUT};

const REASON_CHARS: usize = 500;

/// `create_secret`: the value the executable prints.
pub(super) async fn create(config: &RotationConfig, input: &StepInput) -> Result<String, String> {
    let out = run(config, "create_secret", input).await?;
    let value = out.strip_suffix('\n').unwrap_or(&out);
    if value.is_empty() {
        return Err("the rotator printed no value".into());
    }
    Ok(value.to_owned())
}

/// Any other step: success or the reason it failed.
pub(super) async fn step(config: &RotationConfig, step: &str, input: &StepInput) -> Result<(), String> {
    run(config, step, input).await.map(drop)
}

async fn run(config: &RotationConfig, step: &str, input: &StepInput) -> Result<String, String> {
    let path = config.command.as_deref().ok_or("no rotator command is set")?;
    let doc = serde_json::json!({
        "step": step,
        "secret": input.secret,
        "version": input.version,
        "strategy": match input.strategy { Strategy::SingleUser => "single-user", Strategy::AlternatingUsers => "alternating-users" },
        "current": input.current.expose(),
        "pending": input.pending.as_ref().map(|p| p.expose()),
        "admin": input.admin.as_ref().map(|p| p.expose()),
    });
    let mut child = tokio::process::Command::new(path)
        .arg(step)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("running the rotator `{path}`: {e}"))?;
    let (mut stdin, mut stdout, mut stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let talk = async {
        if let Some(mut s) = stdin.take() {
            // A rotator that does not read its input is fine.
            let _ = s.write_all(doc.to_string().as_bytes()).await;
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let reading = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut out).await;
            }
        };
        let reading_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
        };
        tokio::join!(reading, reading_err);
        let status = child.wait().await;
        (status, out, err)
    };
    let (status, out, err) = tokio::time::timeout(STEP_TIMEOUT, talk)
        .await
        .map_err(|_| format!("the rotator did not finish {step} within {} s", STEP_TIMEOUT.as_secs()))?;
    let status = status.map_err(|e| format!("waiting for the rotator: {e}"))?;
    if status.success() {
        return String::from_utf8(out).map_err(|_| "the rotator printed a value that is not UTF-8".into());
    }
    let mut reason = String::from_utf8_lossy(&err).trim().to_owned();
    for value in [Some(&input.current), input.pending.as_ref(), input.admin.as_ref()].into_iter().flatten() {
        if !value.expose().is_empty() {
            reason = reason.replace(value.expose(), "<redacted>");
        }
    }
    let tail: String = reason.chars().rev().take(REASON_CHARS).collect::<Vec<_>>().into_iter().rev().collect();
    Err(format!("the rotator failed ({status}){}", if tail.is_empty() { String::new() } else { format!(": {tail}") }))
}
