//! Runs the real `mtpx` binary: exit codes, stdout and stderr of every command.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mtpx::proto::secret::{Secret, SecretKind};

const SECRET_B64: &str = "7oe1GqLy6TBc38CV3jx7q09nb29nbGUuY29t";
const SECRET_HEX: &str = "ee87b51aa2f2e9305cdfc095de3c7bab4f676f6f676c652e636f6d";

fn mtpx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtpx"))
        .args(args)
        .output()
        .expect("run mtpx")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn data(name: &str) -> String {
    format!("{}/tests/data/config/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A file in a per-test temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        let dir = std::env::temp_dir().join(format!("mtpx-cli-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn assert_no_panic(o: &Output) {
    let err = stderr(o);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn help_and_version_exit_zero() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["run", "--help"],
        &["help", "simple-run"],
    ] {
        let o = mtpx(args);
        assert!(o.status.success(), "{args:?}");
        assert!(
            stdout(&o).contains("Usage: mtpx"),
            "{args:?}: {}",
            stdout(&o)
        );
    }
    for flag in ["--version", "-v"] {
        let o = mtpx(&[flag]);
        assert!(o.status.success());
        assert_eq!(stdout(&o), "mtpx 0.1.0\n");
    }
}

#[test]
fn usage_errors_exit_two_with_a_hint() {
    for args in [
        &["--bogus"][..],
        &["frobnicate"],
        &[],
        &["run"],
        &["access", "x.toml", "--nope"],
        &["simple-run", "127.0.0.1:1", "not-a-secret"],
        &["generate-secret"],
    ] {
        let o = mtpx(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains("--help"), "{args:?}: {err}");
        assert_no_panic(&o);
        assert!(stdout(&o).is_empty());
    }
}

#[test]
fn generate_secret_default_is_base64_faketls_and_random() {
    let a = mtpx(&["generate-secret", "www.example.com"]);
    let b = mtpx(&["generate-secret", "www.example.com"]);
    assert!(a.status.success() && b.status.success());
    let (sa, sb) = (stdout(&a), stdout(&b));
    assert_ne!(sa, sb, "two secrets must differ");
    let line = sa.strip_suffix('\n').unwrap();
    assert!(line.starts_with('7'), "{line}");
    let s = Secret::parse(line).unwrap();
    assert_eq!(s.kind, SecretKind::FakeTls);
    assert_eq!(s.host, "www.example.com");
    assert_eq!(s.to_base64(), line);
}

#[test]
fn generate_secret_hex_classic_and_dd() {
    let o = mtpx(&["generate-secret", "--hex", "google.com"]);
    let line = stdout(&o).trim_end().to_string();
    assert!(
        line.starts_with("ee") && line.ends_with("676f6f676c652e636f6d"),
        "{line}"
    );
    assert_eq!(Secret::parse(&line).unwrap().to_hex(), line);

    let o = mtpx(&["generate-secret", "--classic"]);
    assert!(o.status.success());
    let line = stdout(&o).trim_end().to_string();
    assert_eq!(line.len(), 32, "{line}");
    assert_eq!(Secret::parse(&line).unwrap().kind, SecretKind::Classic);

    let o = mtpx(&["generate-secret", "--dd", "ignored.example"]);
    assert!(o.status.success());
    let line = stdout(&o).trim_end().to_string();
    assert!(line.starts_with("dd") && line.len() == 34, "{line}");
    assert_eq!(Secret::parse(&line).unwrap().kind, SecretKind::Secure);
    assert!(stderr(&o).contains("ignored"), "{}", stderr(&o));
}

#[test]
fn access_prints_mtg_shaped_json() {
    let o = mtpx(&["access", &data("config-public_ip.toml")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let q4 = format!("port=3128&secret={SECRET_B64}&server=203.0.113.1");
    let q6 = format!("port=3128&secret={SECRET_B64}&server=2001%3Adb8%3A%3A1");
    let expected = format!(
        "{{\n  \"ipv4\": {{\n    \"ip\": \"203.0.113.1\",\n    \"port\": 3128,\n    \
         \"tg_url\": \"tg://proxy?{q4}\",\n    \"tme_url\": \"https://t.me/proxy?{q4}\"\n  }},\n  \
         \"ipv6\": {{\n    \"ip\": \"2001:db8::1\",\n    \"port\": 3128,\n    \
         \"tg_url\": \"tg://proxy?{q6}\",\n    \"tme_url\": \"https://t.me/proxy?{q6}\"\n  }},\n  \
         \"secret\": {{\n    \"hex\": \"{SECRET_HEX}\",\n    \"base64\": \"{SECRET_B64}\"\n  }}\n}}\n"
    );
    assert_eq!(stdout(&o), expected);
}

#[test]
fn access_flags_override_config_and_text_form() {
    let o = mtpx(&[
        "access",
        &data("config-public_ip_v4_only.toml"),
        "-i",
        "198.51.100.2",
        "-p",
        "443",
        "-x",
        "--text",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let q = format!("port=443&secret={SECRET_HEX}&server=198.51.100.2");
    assert_eq!(
        stdout(&o),
        format!("tg://proxy?{q}\nhttps://t.me/proxy?{q}\n")
    );
}

#[test]
fn access_without_addresses_prints_only_the_secret_and_a_note() {
    let o = mtpx(&["access", &data("config-minimal.toml")]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(!out.contains("ipv4") && !out.contains("ipv6"), "{out}");
    assert!(out.contains(SECRET_HEX));
    assert!(stderr(&o).contains("--ipv4"), "{}", stderr(&o));
}

#[test]
fn bad_config_exits_one_naming_file_line_and_key() {
    let path = data("config-public_ip_invalid.toml");
    for cmd in ["run", "access", "doctor"] {
        let o = mtpx(&[cmd, &path]);
        assert_eq!(o.status.code(), Some(1), "{cmd}");
        let err = stderr(&o);
        assert!(
            err.contains(&format!("{path}:3: public-ipv4: \"not-an-ip\"")),
            "{cmd}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_no_panic(&o);
    }
    let o = mtpx(&["run", "/nonexistent/mtpx.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot read"), "{}", stderr(&o));
}

#[test]
fn doctor_reports_config_warnings_and_checks_on_loopback_only() {
    // Every DC goes to one loopback listener, NTP to a loopback port nobody answers on, and a
    // classic secret fronts no site: nothing leaves 127.0.0.1.
    let dc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dc_addr = dc.local_addr().unwrap();
    let ntp = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut text = String::from(
        "secret = \"0123456789abcdef0123456789abcdef\"\nbind-to = \"127.0.0.1:1\"\ntypo-key = 1\n\n\
         [network.timeout]\ntcp = \"2s\"\n\n[network.dc-overrides]\n",
    );
    for id in [1, 2, 3, 4, 5, 203] {
        text.push_str(&format!("{id} = \"{dc_addr}\"\n"));
    }
    let cfg = TempFile::new("doctor", &text);
    let o = mtpx(&["doctor", cfg.path(), "--ntp", &ntp]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    assert!(
        out.starts_with("Config\n  ⚠️ typo-key: unknown key"),
        "{out}"
    );
    assert!(out.contains(&format!("  ⚠️ {ntp}: unreachable")), "{out}");
    assert!(
        out.contains(&format!("  ✅ DC 203: {dc_addr} in ")),
        "{out}"
    );
    assert!(out.contains("  ✅ fronting: not used"), "{out}");
    assert!(out.ends_with("\n9 ok, 2 warnings, 0 failures\n"), "{out}");
    // The warnings are in the report, not logged.
    assert!(!stderr(&o).contains("typo-key"), "{}", stderr(&o));
    let o = mtpx(&["doctor", cfg.path(), "--ntp", &ntp, "--strict"]);
    assert_eq!(o.status.code(), Some(1));
    let o = mtpx(&["doctor", cfg.path(), "--ntp", &ntp, "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let json = stdout(&o);
    assert!(
        json.starts_with(
            "[\n  {\"section\": \"Config\", \"name\": \"typo-key\", \"status\": \"warn\""
        ),
        "{json}"
    );
    assert_eq!(json.matches("\"status\": ").count(), 11, "{json}");
    // Usage errors.
    for args in [
        &["doctor", cfg.path(), "--ntp"][..],
        &["doctor", cfg.path(), "--ntp", "h:0"],
        &["doctor", "--json"],
    ] {
        let o = mtpx(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert_no_panic(&o);
    }
    let o = mtpx(&["doctor", "--help"]);
    assert!(o.status.success());
    for word in ["--json", "--strict", "--ntp", "Time skew", "SNI-DNS"] {
        assert!(stdout(&o).contains(word), "{word}");
    }
    drop(dc);
}

/// The QR block the binary must print for `link`: the link, then the code (ECC M) drawn for a
/// dark terminal.
fn qr_block(link: &str) -> String {
    use mtpx::formats::qr;
    let code = qr::encode(link.as_bytes(), qr::Ecc::Medium).unwrap();
    format!("{link}\n{}", qr::render_terminal(&code, true))
}

#[test]
fn access_qr_alone_draws_each_tme_link() {
    let o = mtpx(&["access", &data("config-public_ip.toml"), "--qr"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let q4 = format!("port=3128&secret={SECRET_B64}&server=203.0.113.1");
    let q6 = format!("port=3128&secret={SECRET_B64}&server=2001%3Adb8%3A%3A1");
    let expected = format!(
        "{}\n{}",
        qr_block(&format!("https://t.me/proxy?{q4}")),
        qr_block(&format!("https://t.me/proxy?{q6}"))
    );
    assert_eq!(stdout(&o), expected);
    // The drawing is made of block characters only, one line per two module rows.
    let out = stdout(&o);
    let art: Vec<&str> = out
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("https"))
        .collect();
    assert!(art.len() > 10, "{art:?}");
    assert!(
        art.iter().all(|l| l.chars().all(|c| " █▀▄".contains(c))),
        "{art:?}"
    );
}

#[test]
fn access_qr_after_json_or_text_draws_tg_links() {
    let path = data("config-public_ip_v4_only.toml");
    let q = format!("port=3128&secret={SECRET_B64}&server=203.0.113.1");
    let tg = format!("tg://proxy?{q}");
    let o = mtpx(&["access", &path, "--qr", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plain = stdout(&mtpx(&["access", &path]));
    assert!(plain.starts_with('{'), "{plain}");
    assert_eq!(stdout(&o), format!("{plain}\n{}", qr_block(&tg)));
    let o = mtpx(&["access", &path, "--text", "--qr"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!("{tg}\nhttps://t.me/proxy?{q}\n\n{}", qr_block(&tg))
    );
    // No address: no links and no codes.
    let o = mtpx(&["access", &data("config-minimal.toml"), "--qr"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "");
}

#[test]
fn run_with_a_taken_port_fails_cleanly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = TempFile::new(
        "taken",
        &format!("secret = \"{SECRET_B64}\"\nbind-to = \"{addr}\"\nworkers = 1\n"),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtpx"))
        .args(["run", cfg.path()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mtpx run kept running although {addr} is taken");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let o = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(err.contains("level=error"), "{err}");
    assert_no_panic(&o);
    drop(taken);
}

fn make_secret(kind: SecretKind, host: &str, seed: u64) -> Secret {
    Secret::generate(kind, host, &mut mtpx::proto::XorShift64(seed))
}

#[test]
fn access_prints_every_users_links_keyed_by_name() {
    let (a, b) = (
        make_secret(SecretKind::FakeTls, "a.example", 1),
        make_secret(SecretKind::Secure, "", 2),
    );
    let cfg = TempFile::new(
        "access-users",
        &format!(
            "secret = \"{SECRET_B64}\"\nbind-to = \"0.0.0.0:3128\"\npublic-ipv4 = \"203.0.113.1\"\n\
             users-file = \"users.toml\"\n[users.alice]\nsecret = \"{}\"\n",
            a.to_hex()
        ),
    );
    let dir = cfg.0.parent().unwrap();
    std::fs::write(
        dir.join("users.toml"),
        format!("[users.\"bob.smith\"]\nsecret = \"{}\"\n", b.to_hex()),
    )
    .unwrap();
    let o = mtpx(&["access", cfg.path()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let keys: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("  \"") && l.ends_with("{"))
        .collect();
    assert_eq!(
        keys,
        ["  \"default\": {", "  \"alice\": {", "  \"bob.smith\": {"],
        "{out}"
    );
    assert!(
        out.contains(&a.to_base64()) && out.contains(&b.to_hex()),
        "{out}"
    );
    // --user: that user's links in the single-secret shape, as for a config of its own.
    let single = TempFile::new(
        "access-single",
        &format!(
            "secret = \"{}\"\nbind-to = \"0.0.0.0:3128\"\npublic-ipv4 = \"203.0.113.1\"\n",
            b.to_hex()
        ),
    );
    let one = mtpx(&["access", cfg.path(), "--user", "bob.smith"]);
    assert!(one.status.success(), "{}", stderr(&one));
    assert_eq!(stdout(&one), stdout(&mtpx(&["access", single.path()])));
    let text = stdout(&mtpx(&["access", cfg.path(), "--text"]));
    let heads: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    assert_eq!(heads, ["# default", "# alice", "# bob.smith"], "{text}");
    assert_eq!(text.lines().count(), 9, "{text}");
    let qr = stdout(&mtpx(&["access", cfg.path(), "--qr"]));
    let heads: Vec<&str> = qr.lines().filter(|l| l.starts_with('#')).collect();
    assert_eq!(heads, ["# default", "# alice", "# bob.smith"]);
    let o = mtpx(&["access", cfg.path(), "--user", "nobody"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no user named \"nobody\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn users_list_and_reset_quota() {
    let (a, b) = (
        make_secret(SecretKind::FakeTls, "a.example", 3),
        make_secret(SecretKind::Classic, "", 4),
    );
    let cfg = TempFile::new(
        "users-list",
        &format!(
            "bind-to = \"0.0.0.0:3128\"\n[users.alice]\nsecret = \"{}\"\nquota = \"1GiB\"\n\
             quota-period = \"30d\"\nmax-ips = 2\n[users.bob]\nsecret = \"{}\"\n\
             expires = \"2001-01-01\"\n",
            a.to_hex(),
            b.to_hex()
        ),
    );
    let dir = cfg.0.parent().unwrap();
    let o = mtpx(&["users", "list", cfg.path()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][0], "NAME");
    let want1 = "alice faketls a.example - 2 1.0 GiB 720h - - - ok";
    let want2 = "bob classic - - - - - - - 2001-01-01T00:00:00Z expired";
    assert_eq!(rows[1].join(" "), want1);
    assert_eq!(rows[2].join(" "), want2);
    assert!(
        !out.contains(&a.to_hex()) && !out.contains(&b.to_hex()),
        "{out}"
    );
    // Usage from the state file (as the proxy writes it).
    let start = 1_900_000_000;
    let state = mtpx::formats::state::State {
        written: start,
        users: vec![mtpx::formats::state::UserUsage {
            name: "alice".into(),
            used: 3 << 20,
            period_start: start,
        }],
        applied: vec![],
    };
    mtpx::background::users::store_state(&dir.join("config.state"), &state).unwrap();
    let out = stdout(&mtpx(&["users", "list", cfg.path()]));
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .contains("3.0 MiB  2030-04-16T17:46:40Z"),
        "{out}"
    );
    // reset-quota leaves a request; list shows it pending.
    let o = mtpx(&["users", "reset-quota", cfg.path(), "alice"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("reset of \"alice\" requested"),
        "{}",
        stdout(&o)
    );
    let reqs = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("config.reset-"))
        .count();
    assert_eq!(reqs, 1);
    let json = stdout(&mtpx(&["users", "list", "--json", cfg.path()]));
    assert!(
        json.contains("\"name\": \"alice\"") && json.contains("\"used\": 0"),
        "{json}"
    );
    assert!(json.contains("\"status\": \"reset-pending\""), "{json}");
    let o = mtpx(&["users", "reset-quota", cfg.path(), "zed"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no user named \"zed\""),
        "{}",
        stderr(&o)
    );
    // A corrupt state file is reported; the users are listed all the same.
    std::fs::write(dir.join("config.state"), "garbage\n").unwrap();
    let o = mtpx(&["users", "list", cfg.path()]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("config.state: "), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 3);
}
