//! The README's five-minute tour, run as written against a real server (as root): every `berth`
//! command of the tour, in order, must succeed, and `curl` must get the demo's answer. Only what
//! needs the reader's own files is stood in for: the app binary (`./target/release/app`) is the
//! bundled hello app, `<op-id>` is an operation the tour made; the `skopeo` push of the reader's
//! own OCI layout is covered by the registry's tests.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::hello_binary;
use support::*;

/// The tour's commands: the first `sh` block after its heading, with continuations joined and
/// comments dropped.
fn tour() -> Result<Vec<String>> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))?;
    let section = readme.split("## A five-minute tour").nth(1).ok_or("no tour in the README")?;
    let block = section.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).ok_or("no sh block in the tour")?;
    let mut out = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.split(" #").next().unwrap_or("").trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    Ok(out)
}

#[test]
fn the_readme_tour_runs_as_written() -> Result {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let (env, _sandbox) = runtime_sandbox("r", 245, "", &data)?;
    let home = dir.path().join("home");
    let mut up = Command::new(BIN);
    up.args(["up", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&data);
    up.envs(env).env("BERTH_ROUTER_HTTP", "127.0.0.1:0").env("BERTH_ROUTER_HTTPS", "127.0.0.1:0").env("HOME", &home);
    let out_path = dir.path().join("up.out");
    let child = up.stdout(std::fs::File::create(&out_path)?).stderr(Stdio::null()).spawn()?;
    let _up = berth_testkit::BerthProcess { child, addr: String::new(), token: String::new() };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !std::fs::read_to_string(&out_path)?.contains("The demo service `hello` is RUNNING") {
        if Instant::now() > deadline {
            return Err("berth up did not get the demo running".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let routers = std::fs::read_to_string(data.join("router-address"))?;
    let https_port =
        routers.lines().find_map(|l| l.strip_prefix("https://")).and_then(|a| a.rsplit(':').next()).ok_or("no https")?.to_owned();
    let app = hello_binary(dir.path())?.display().to_string();
    let berth = |args: &[&str], stdout: Option<&Path>| -> Result<String> {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir").arg(&data).args(args).current_dir(dir.path()).env("HOME", &home);
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(format!("berth {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)).into());
        }
        if let Some(file) = stdout {
            std::fs::write(file, &out.stdout)?;
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut ran = 0;
    for line in tour()? {
        for command in line.split("&&").map(str::trim) {
            let words: Vec<&str> = command.split_whitespace().collect();
            match words.first().copied() {
                Some("alias") | Some("skopeo") => continue,
                Some("curl") => {
                    let url = words.last().copied().unwrap_or("").replace(":8443", &format!(":{https_port}"));
                    let out = Command::new("curl")
                        .args(["-s", "--cacert"])
                        .arg(dir.path().join("berth-ca.pem"))
                        .args(["--resolve", &format!("hello.localhost:{https_port}:127.0.0.1"), &url])
                        .output()?;
                    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hello from"), "{command}: {out:?}");
                }
                Some("berth") => {
                    if words.contains(&"-f") {
                        continue;
                    }
                    let (args, redirect) = match words.iter().position(|w| *w == ">") {
                        Some(i) => (&words[1..i], words.get(i + 1).map(|f| dir.path().join(f))),
                        None => (&words[1..], None),
                    };
                    let op_id = if args.contains(&"<op-id>") {
                        let ops: serde_json::Value =
                            serde_json::from_str(&berth(&["-o", "json", "service", "operations", "web-app"], None)?)?;
                        ops["operations"][0]["id"].as_str().unwrap_or_default().to_owned()
                    } else {
                        String::new()
                    };
                    let args: Vec<&str> = args
                        .iter()
                        .map(|a| match *a {
                            "./target/release/app" => app.as_str(),
                            "<op-id>" => op_id.as_str(),
                            other => other,
                        })
                        .collect();
                    berth(&args, redirect.as_deref())?;
                }
                other => return Err(format!("the tour has a command this test does not know: {other:?}").into()),
            }
            ran += 1;
        }
    }
    assert!(ran >= 20, "only {ran} commands of the tour ran");
    Ok(())
}
