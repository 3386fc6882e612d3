//! JA4 fingerprints (FoxIO) of real ClientHellos: mtpx's own implementation against values
//! computed by an independent one (the `ja4plus` Python library from PyPI, a test-only tool).
//!
//! The vectors: TDLib 1.8.69's hello (captured from its `testProxy`), curl 7.88 / OpenSSL
//! 3.0's, the Telegram-like hello of mtpx's tests and the scout's hellos. The expected strings
//! below were computed by `ja4plus` 1.4.0, and the test computes them again with it (.venv-pq,
//! which `make test` installs through scripts/test-deps.sh; missing, the test fails).

use std::process::Command;

use mtpx::proto::browserhello::browser_hello;
use mtpx::proto::ja4::fingerprint;
use mtpx::proto::tlsprofile::HelloKind;

const VECTORS: [(&str, &str); 3] = [
    (
        "tdlib-1.8.69-client-hello.bin",
        "t13d1516h2_8daaf6152771_806a8c22fdea",
    ),
    (
        "curl-openssl-3.0-client-hello.bin",
        "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6",
    ),
    (
        "nginx-rsa-client-hello.bin",
        "t13d1515h2_8daaf6152771_de4a06bb82e3",
    ),
];

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/data/tls/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn ours(rec: &[u8]) -> String {
    String::from_utf8(fingerprint(&rec[5..]).expect("a fingerprint").to_vec()).unwrap()
}

/// `ja4plus`'s JA4 of each file: the Python of .venv-pq (scripts/test-deps.sh), or
/// `MTPX_PQ_PYTHON`. Missing: the test fails (it never skips) with the install command.
fn independent(files: &[String]) -> Vec<String> {
    let py = std::env::var_os("MTPX_PQ_PYTHON").map_or_else(
        || std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv-pq/bin/python")),
        std::path::PathBuf::from,
    );
    assert!(
        py.is_file(),
        "{} not found: install what the tests need with scripts/test-deps.sh (`make test` runs \
         it)",
        py.display()
    );
    let script = "import sys\n\
        from ja4plus.utils.tls_utils import parse_tls_handshake\n\
        from ja4plus.fingerprinters.ja4 import generate_ja4\n\
        for f in sys.argv[1:]:\n    print(generate_ja4(parse_tls_handshake(open(f, 'rb').read())))\n";
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(files)
        .output()
        .expect("run the ja4plus Python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn fingerprints_match_an_independent_implementation() {
    for (file, want) in VECTORS {
        assert_eq!(ours(&data(file)), want, "{file}");
    }
    // The scout's hellos: a current Chrome's fingerprint for each kind, never TDLib's.
    let dir = std::env::temp_dir().join(format!("mtpx-ja4-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = mtpx::proto::XorShift64(9);
    let mut files: Vec<String> = VECTORS
        .iter()
        .map(|(f, _)| format!("{}/tests/data/tls/{f}", env!("CARGO_MANIFEST_DIR")))
        .collect();
    let mut want: Vec<String> = VECTORS.iter().map(|(_, w)| w.to_string()).collect();
    for (i, kind) in HelloKind::ALL.into_iter().enumerate() {
        let rec = browser_hello(&mut rng, "www.example.com", kind);
        let path = dir.join(format!("scout-{i}.bin"));
        std::fs::write(&path, &rec).unwrap();
        files.push(path.display().to_string());
        let fp = ours(&rec);
        // Chrome 110-116 (JA4.md's own example) and Chrome 131+ (X25519MLKEM768, ECH GREASE,
        // ALPS 0x44cd).
        let chrome = match kind {
            HelloKind::Classic => "t13d1516h2_8daaf6152771_e5627efa2ab1",
            HelloKind::PostQuantum => "t13d1516h2_8daaf6152771_d8a2da3f94cd",
        };
        assert_eq!(fp, chrome, "{kind:?}");
        assert_ne!(fp, VECTORS[0].1);
        want.push(fp);
    }
    let got = independent(&files);
    assert_eq!(got, want);
    eprintln!("ja4plus agrees on {} hellos", got.len());
    let _ = std::fs::remove_dir_all(&dir);
}
