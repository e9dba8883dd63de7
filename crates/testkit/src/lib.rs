//! Helpers shared by berth's integration tests and `cargo xtask bench`: starting `berth server`
//! and Debian's docker-registry on free loopback ports, and repeatable incompressible data.
//! Everything started here is killed when its handle is dropped.

pub mod aws;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Pseudo-random, incompressible bytes from a seed (xorshift64), the same on every run.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_for_port(addr: &str, within: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{addr} did not accept connections within {within:?}").into())
}

/// A `berth server` process on `127.0.0.1:0` with a given data directory.
pub struct BerthProcess {
    pub child: Child,
    /// `host:port` of the API listener.
    pub addr: String,
    /// The admin token.
    pub token: String,
}

impl BerthProcess {
    /// Starts `bin server` on a free port and waits until it listens.
    pub fn start(bin: &Path, data_dir: &Path, env: &[(&str, &str)]) -> Result<BerthProcess, Error> {
        let addr_file = data_dir.join("api-address");
        let mut child = BerthProcess::spawn(bin, data_dir, env)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                let addr = a.trim().trim_start_matches("http://").to_owned();
                let token = std::fs::read_to_string(data_dir.join("admin-token"))?.trim().to_owned();
                return Ok(BerthProcess { child, addr, token });
            }
            if let Some(status) = child.try_wait()? {
                return Err(format!("berth server exited early: {status}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("berth server did not start within 20 s".into())
    }

    /// Spawns `bin server` on a free port, as [`BerthProcess::start`] does, without waiting: it
    /// says it listens by writing `<data_dir>/api-address`.
    pub fn spawn(bin: &Path, data_dir: &Path, env: &[(&str, &str)]) -> Result<Child, Error> {
        let _ = std::fs::remove_file(data_dir.join("api-address"));
        let mut cmd = Command::new(bin);
        cmd.args(["server", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir);
        // Tests that want containers turn the runtime on with their own bridge and CIDR.
        cmd.env("BERTH_LOG", "warn")
            .env("BERTH_RUNTIME", "off")
            .env("BERTH_ROUTER_HTTP", "127.0.0.1:0")
            .env("BERTH_ROUTER_HTTPS", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ok(cmd.spawn()?)
    }
}

impl Drop for BerthProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's docker-registry (CNCF distribution 2.8.2) on a free loopback port, storing into a
/// temporary directory, with deletes enabled.
pub struct DockerRegistry {
    pub child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl DockerRegistry {
    pub fn start() -> Result<DockerRegistry, Error> {
        let dir = tempfile::Builder::new().prefix("berth-anchor-registry").tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let data: PathBuf = dir.path().join("data");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                data.display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting docker-registry (apt-get install docker-registry): {e}"))?;
        let reg = DockerRegistry { child, addr, _dir: dir };
        wait_for_port(&reg.addr, Duration::from_secs(20))?;
        Ok(reg)
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn noise_is_repeatable_and_sized() {
        assert_eq!(super::noise(1, 100), super::noise(1, 100));
        assert_ne!(super::noise(1, 100), super::noise(2, 100));
        assert_eq!(super::noise(3, 13).len(), 13);
    }
}

/// Compiles `examples/hello` into one static binary in `dir` (rustc alone: standard library only).
pub fn hello_binary(dir: &Path) -> Result<PathBuf, Error> {
    example_binary("hello", dir)
}

/// Compiles `examples/probe`, the isolation probe, into one static binary in `dir`.
pub fn probe_binary(dir: &Path) -> Result<PathBuf, Error> {
    example_binary("probe", dir)
}

/// Compiles the one-file, std-only `examples/<name>` into a static binary `dir/<name>`.
fn example_binary(name: &str, dir: &Path) -> Result<PathBuf, Error> {
    // Found from the running package's directory (cargo sets it when running tests and xtasks),
    // so a build cache shared between checkouts never points at another checkout.
    let start = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let rel = format!("examples/{name}/src/main.rs");
    let src = start
        .ancestors()
        .map(|d| d.join(&rel))
        .find(|p| p.exists())
        .ok_or_else(|| format!("{rel} not found above the package directory"))?;
    let out = dir.join(name);
    let ok = Command::new("rustc")
        .args(["--edition", "2021", "-O", "-C", "target-feature=+crt-static", "-o"])
        .arg(&out)
        .arg(&src)
        .status()?
        .success();
    if ok {
        Ok(out)
    } else {
        Err(format!("compiling examples/{name} failed").into())
    }
}

/// What a test or benchmark that runs containers created on the host, removed when dropped —
/// also when the test fails: its instances (killed, deleted, unmounted), network namespaces with
/// its prefix, its bridge and unreachable route, and its cgroup parent.
#[derive(Debug, Clone)]
pub struct RuntimeSandbox {
    /// The berth binary (for `berth shim delete`).
    pub berth: PathBuf,
    /// The runtime's `instances/` directory.
    pub instances: PathBuf,
    pub netns_prefix: String,
    pub bridge: String,
    pub cidr: String,
    pub cgroup_parent: String,
}

impl Drop for RuntimeSandbox {
    fn drop(&mut self) {
        // The router process outlives its server while instances run.
        if let Some(data) = self.instances.parent().and_then(Path::parent) {
            stop_router(data);
        }
        if let Ok(entries) = std::fs::read_dir(&self.instances) {
            for e in entries.flatten() {
                if let Some(pid) = std::fs::read_to_string(e.path().join("container.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
                }
                let _ = Command::new(&self.berth).arg("shim").arg("delete").arg(e.path()).status();
                let _ = Command::new("umount").arg("-l").arg(e.path().join("rootfs")).stderr(Stdio::null()).status();
                let _ = Command::new("umount").arg("-l").arg(e.path().join("bundle")).stderr(Stdio::null()).status();
                for m in std::fs::read_dir(e.path().join("secrets")).into_iter().flatten().flatten() {
                    let _ = Command::new("umount").arg("-l").arg(m.path()).stderr(Stdio::null()).status();
                }
            }
        }
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                let n = l.split_whitespace().next().unwrap_or("");
                if n.starts_with(&self.netns_prefix) {
                    let _ = Command::new("ip").args(["netns", "del", n]).status();
                }
            }
        }
        cleanup_runtime_host(&self.bridge, &self.cidr, &self.cgroup_parent);
    }
}

/// Kills the router process of the data directory `data`, if one runs.
pub fn stop_router(data: &Path) {
    let Some(pid) = std::fs::read_to_string(data.join("router.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok()) else { return };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if cmdline.split(|b| *b == 0).nth(1) == Some(&b"router"[..]) {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
    }
}

/// Removes what an embedded runtime set up on the host for a bridge: the bridge, the CIDR's
/// `unreachable` route, its nftables tables (host guard, outbound NAT) and its cgroup parent.
pub fn cleanup_runtime_host(bridge: &str, cidr: &str, cgroup_parent: &str) {
    let _ = Command::new("ip").args(["link", "del", "dev", bridge]).stderr(Stdio::null()).status();
    let _ = Command::new("ip").args(["route", "del", "unreachable", cidr, "metric", "4000"]).stderr(Stdio::null()).status();
    for (family, table) in
        [("inet", format!("berth_{bridge}")), ("ip", format!("berth_nat_{bridge}")), ("bridge", format!("berth_br_{bridge}"))]
    {
        let _ = Command::new("nft").args(["delete", "table", family, &table]).stderr(Stdio::null()).status();
    }
    for ctl in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let _ = std::fs::remove_dir(ctl.path().join(cgroup_parent));
    }
}

/// `examples/guestbook` (it has dependencies, so cargo builds it), built into the test's target
/// directory and profile — every time: cargo does nothing when it is up to date, and a binary
/// left by an earlier build of other sources would run the old app.
pub fn guestbook_binary() -> Result<PathBuf, Error> {
    // Test binaries live in <target>/<profile>/deps; the example's binary in <target>/<profile>.
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(Path::parent).ok_or("no target directory above the test binary")?;
    let bin = profile_dir.join("guestbook");
    let start = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let root = start.ancestors().find(|d| d.join("examples/guestbook/Cargo.toml").exists()).ok_or("examples/guestbook not found")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = profile_dir.parent().ok_or("no target directory")?;
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "guestbook"]).env("CARGO_TARGET_DIR", target).current_dir(root);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if !cmd.status()?.success() || !bin.metadata().is_ok_and(|m| m.len() > 0) {
        return Err("building examples/guestbook failed".into());
    }
    Ok(bin)
}

/// A MariaDB server (Debian's mariadb-server) of the caller's own: its data directory, socket
/// and address, started in network namespace `netns` when given, with database `guestbook`
/// and user `gb` (password `password`) allowed from anywhere. Stopped when dropped.
pub struct MariaDb {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub addr: String,
}

impl MariaDb {
    pub fn start(netns: Option<&str>, bind: &str, port: u16, password: &str) -> Result<MariaDb, Error> {
        let dir = tempfile::Builder::new().prefix("berth-mariadb").tempdir()?;
        let data = dir.path().join("data");
        let installed = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--auth-root-authentication-method=socket", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !installed.success() {
            return Err("mariadb-install-db failed (install mariadb-server)".into());
        }
        let socket = dir.path().join("mysqld.sock");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "mariadbd"]);
                c
            }
            None => Command::new("mariadbd"),
        };
        cmd.args(["--no-defaults", "--user=root", "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=16M"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.path().join("mysqld.pid").display()))
            .arg(format!("--bind-address={bind}"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("mysqld.log"))?);
        let child = cmd.spawn()?;
        let db = MariaDb { child, socket, addr: format!("{bind}:{port}"), dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !db.socket.exists() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(db.dir.path().join("mysqld.log")).unwrap_or_default();
                return Err(format!("MariaDB did not start within a minute:\n{log}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        db.sql(&format!(
            "CREATE DATABASE guestbook; CREATE USER 'gb'@'%' IDENTIFIED BY '{password}'; GRANT ALL ON guestbook.* TO 'gb'@'%'; FLUSH PRIVILEGES;"
        ))?;
        Ok(db)
    }

    /// Runs `sql` as root over the socket; its output (tab-separated, no headers).
    pub fn sql(&self, sql: &str) -> Result<String, Error> {
        let out =
            Command::new("mariadb").arg(format!("--socket={}", self.socket.display())).args(["-uroot", "-N", "-B", "-e", sql]).output()?;
        if !out.status.success() {
            return Err(format!("mariadb -e {sql:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        // `ip netns exec` runs mariadbd as its child: stop the server by its own pid first.
        if let Some(pid) = std::fs::read_to_string(self.dir.path().join("mysqld.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PostgreSQL server (Debian's postgresql) of the caller's own: its data directory and socket
/// directory, listening on `bind:port` (in network namespace `netns` when given) with password
/// (SCRAM) logins from anywhere, database `guestbook` and user `gb` (password `password`),
/// which owns it. Runs as the `postgres` user, as PostgreSQL requires. Stopped when dropped.
pub struct Postgres {
    child: Child,
    pub dir: tempfile::TempDir,
    pub addr: String,
    bin: PathBuf,
}

impl Postgres {
    pub fn start(netns: Option<&str>, bind: &str, port: u16, password: &str) -> Result<Postgres, Error> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| "PostgreSQL is not installed (install postgresql)")?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("postgres").exists())
            .max_by_key(|b| b.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()))
            .ok_or("no /usr/lib/postgresql/*/bin/postgres (install postgresql)")?;
        let dir = tempfile::Builder::new().prefix("berth-postgres").tempdir()?;
        let data = dir.path().join("data");
        let owned = Command::new("chown").args(["postgres:postgres"]).arg(dir.path()).status()?;
        if !owned.success() {
            return Err("chown postgres: is there a `postgres` user (install postgresql)?".into());
        }
        let as_postgres = |program: &Path| {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program);
            c
        };
        let initdb = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !initdb.success() {
            return Err("initdb failed".into());
        }
        std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhost all all 0.0.0.0/0 scram-sha-256\n")?;
        let mut server = as_postgres(&bin.join("postgres"));
        if let Some(ns) = netns {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(server.get_program()).args(server.get_args());
            server = c;
        }
        server
            .arg("-D")
            .arg(&data)
            .args(["-c", &format!("listen_addresses={bind}"), "-p", &port.to_string()])
            .args(["-c", &format!("unix_socket_directories={}", dir.path().display())])
            .args(["-c", "fsync=off", "-c", "shared_buffers=16MB", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("postgres.log"))?);
        let child = server.spawn()?;
        let pg = Postgres { child, addr: format!("{bind}:{port}"), dir, bin };
        // Ready when it accepts connections: its socket appears while it is still starting up,
        // when it refuses them ("the database system is starting up").
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pg.ready()? {
            if Instant::now() > deadline {
                return Err(format!("PostgreSQL did not start within a minute:\n{}", pg.log()).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        pg.sql(&format!("CREATE USER gb PASSWORD '{password}'"))?;
        pg.sql("CREATE DATABASE guestbook OWNER gb")?;
        Ok(pg)
    }

    fn port(&self) -> &str {
        self.addr.rsplit(':').next().unwrap_or("5432")
    }

    /// Whether it accepts connections on its socket (`pg_isready`).
    fn ready(&self) -> Result<bool, Error> {
        let status = Command::new(self.bin.join("pg_isready"))
            .args(["-q", "-U", "postgres", "-d", "postgres", "-p", self.port()])
            .arg("-h")
            .arg(self.dir.path())
            .status()?;
        Ok(status.success())
    }

    /// Runs `sql` as the superuser over the socket; its output (unaligned, no headers).
    pub fn sql(&self, sql: &str) -> Result<String, Error> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "postgres", "-p", self.port()])
            .arg("-h")
            .arg(self.dir.path())
            .args(["-c", sql])
            .output()?;
        if !out.status.success() {
            return Err(format!("psql -c {sql:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The postmaster's pid (under `ip netns exec` it is not our child); SIGINT: fast shutdown.
        let pid = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|p| p.lines().next()?.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let _ = Command::new("kill").args(["-INT", &pid.to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private LAN inside this machine: network namespace `ns`, joined by a veth to a new host
/// bridge `bridge` that has `host_addrs` (the first is the namespace's default gateway), the
/// namespace's end having `ns_addrs`. Both removed when dropped.
pub struct Lan {
    pub ns: String,
    pub bridge: String,
}

impl Lan {
    pub fn add(ns: &str, bridge: &str, host_addrs: &[&str], ns_addrs: &[&str]) -> Result<Lan, Error> {
        let ip = |args: &[&str]| -> Result<(), Error> {
            let out = Command::new("ip").args(args).stdin(Stdio::null()).output()?;
            if !out.status.success() {
                return Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
            }
            Ok(())
        };
        // Dropped on any failure below: what was made so far goes.
        let lan = Lan { ns: ns.to_owned(), bridge: bridge.to_owned() };
        ip(&["netns", "add", ns])?;
        ip(&["link", "add", "name", bridge, "type", "bridge"])?;
        for a in host_addrs {
            ip(&["addr", "add", a, "dev", bridge])?;
        }
        ip(&["link", "set", "dev", bridge, "up"])?;
        let (host_end, ns_end) = (format!("{bridge}h"), format!("{bridge}p"));
        ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &ns_end, "netns", ns])?;
        ip(&["link", "set", "dev", &host_end, "master", bridge, "up"])?;
        for a in ns_addrs {
            ip(&["-n", ns, "addr", "add", a, "dev", &ns_end])?;
        }
        ip(&["-n", ns, "link", "set", "dev", &ns_end, "up"])?;
        ip(&["-n", ns, "link", "set", "dev", "lo", "up"])?;
        let gateway = host_addrs.first().and_then(|a| a.split('/').next()).ok_or("a LAN needs a host address")?;
        ip(&["-n", ns, "route", "add", "default", "via", gateway])?;
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["link", "del", "dev", &self.bridge]).stderr(Stdio::null()).status();
    }
}

/// One of the databases berth's stories run on.
pub enum Database {
    Maria(MariaDb),
    Postgres(Postgres),
}

impl Database {
    /// `mariadb` (or `mysql`) or `postgresql` (or `postgres`), as [`MariaDb::start`] and
    /// [`Postgres::start`] start them, with a superuser-like `admin` (password `admin_password`)
    /// that may create and change other users.
    pub fn start(kind: &str, netns: Option<&str>, bind: &str, password: &str, admin_password: &str) -> Result<Database, Error> {
        match kind {
            "mariadb" | "mysql" => {
                let db = MariaDb::start(netns, bind, 3306, password)?;
                db.sql(&format!(
                    "CREATE USER 'admin'@'%' IDENTIFIED BY '{admin_password}'; GRANT ALL ON *.* TO 'admin'@'%' WITH GRANT OPTION;"
                ))?;
                Ok(Database::Maria(db))
            }
            "postgresql" | "postgres" => {
                let db = Postgres::start(netns, bind, 5432, password)?;
                db.sql(&format!("CREATE USER admin SUPERUSER PASSWORD '{admin_password}'"))?;
                Ok(Database::Postgres(db))
            }
            other => Err(format!("database `{other}`: use mariadb or postgresql").into()),
        }
    }

    /// berth's rotator for it.
    pub fn rotator(&self) -> &'static str {
        match self {
            Database::Maria(_) => "mariadb",
            Database::Postgres(_) => "postgresql",
        }
    }

    /// `DB_KIND` of examples/guestbook.
    pub fn guestbook_kind(&self) -> &'static str {
        match self {
            Database::Maria(_) => "mysql",
            Database::Postgres(_) => "postgres",
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Database::Maria(_) => 3306,
            Database::Postgres(_) => 5432,
        }
    }

    /// Logins the database refused so far (MariaDB's `Access_denied_errors`; PostgreSQL's
    /// password failures in its log).
    pub fn failed_logins(&self) -> Result<u64, Error> {
        match self {
            Database::Maria(db) => {
                let out = db.sql("SHOW GLOBAL STATUS LIKE 'Access_denied_errors'")?;
                Ok(out.split_whitespace().nth(1).and_then(|n| n.parse().ok()).ok_or("no Access_denied_errors")?)
            }
            Database::Postgres(db) => Ok(db.log().matches("password authentication failed").count() as u64),
        }
    }
}
