//! `berth image build`: images made without Docker, pushed to berth's registry, read back by
//! skopeo.

mod support;

use support::*;

#[test]
fn builds_a_directory_and_pushes_two_tags() -> Result {
    let s = Server::start()?;
    let src = tempfile::tempdir()?;
    std::fs::create_dir_all(src.path().join("bin"))?;
    std::fs::write(src.path().join("bin/app"), "#!/bin/sh\necho hi\n")?;
    let dir = src.path().display().to_string();
    let build: Vec<&str> = vec![
        "image",
        "build",
        &dir,
        "--entrypoint",
        "/bin/app",
        "--cmd",
        r#"["--greeting", "hello world"]"#,
        "--port",
        "8080",
        "--env",
        "MODE=prod",
    ];
    let out = s.cli_ok(&[&build[..], &["-t", "team/app:3f2a9c1", "-t", "team/app:latest"]].concat())?;
    let digest = out.trim().to_owned();
    assert!(digest.starts_with("sha256:"), "{out}");
    for tag in ["3f2a9c1", "latest"] {
        let r = http("HEAD", &s.url(&format!("/v2/team/app/manifests/{tag}")), Some(&s.creds()), &[], b"")?;
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    }
    let inspect =
        skopeo(&["inspect", "--config", "--tls-verify=false", "--creds", &s.creds(), &format!("docker://{}/team/app:latest", s.addr)])?;
    ok(&inspect)?;
    let config: serde_json::Value = serde_json::from_slice(&inspect.stdout)?;
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/bin/app"]));
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["--greeting", "hello world"]));
    assert_eq!(config["config"]["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
    assert!(config["config"]["Env"].as_array().is_some_and(|e| e.iter().any(|v| v == "MODE=prod")));

    // The same build again is the same image: nothing new to push, the tags stay put.
    let again = s.cli(&[&build[..], &["-t", "team/app:3f2a9c1"]].concat())?;
    assert!(again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), digest);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already there"));
    Ok(())
}

#[test]
fn builds_a_binary_with_its_libraries() -> Result {
    let s = Server::start()?;
    let out = s.cli_ok(&["-o", "json", "image", "build", "--binary", "/bin/ls", "--with-libs", "-t", "tools:ls"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let back = tempfile::tempdir()?;
    let dst = format!("oci:{}:ls", back.path().display());
    ok(&skopeo_copy(&format!("docker://{}/tools:ls", s.addr), &dst, &s.creds())?)?;
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(back.path().join("index.json"))?)?;
    assert_eq!(index["manifests"][0]["digest"], v["digest"]);
    Ok(())
}

#[test]
fn explains_bad_input() -> Result {
    let s = Server::start()?;
    let src = tempfile::tempdir()?;
    let dir = src.path().display().to_string();
    let cases: [(&[&str], &str); 4] = [
        (&["image", "build", &dir, "-t", "notag"], "`notag` needs the form repository:tag"),
        (&["image", "build", &dir, "--env", "NOEQUALS", "-t", "a:b"], "--env `NOEQUALS` needs the form KEY=value"),
        (&["image", "build", "/nonexistent-dir", "-t", "a:b"], "/nonexistent-dir is not a directory"),
        (&["image", "build", &dir, "-t", "Bad:b"], "repository name `Bad` is invalid"),
    ];
    for (args, want) in cases {
        let out = s.cli(args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{args:?}: {err}");
    }
    Ok(())
}
