//! The served API against its own document, `docs/openapi.json`, by a schema-driven fuzzer:
//! Schemathesis (from PyPI, installed into `target/schemathesis` by `scripts/test.sh`) sends
//! thousands of requests made from the schema, valid and invalid, and checks that no answer
//! is a server error, every status and content type is documented, every body matches its
//! schema, and every request the schema forbids is refused. It speaks TCP; socat (Debian's)
//! carries it to the daemon's unix socket, both inside the test's network namespace.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::daemon::Daemon;
use e2e::netns::NetNs;
use e2e::run::{repo_root, wait_with_timeout, ChildGuard};

/// Where `scripts/test.sh` installs Schemathesis (override: `SLICEVISOR_SCHEMATHESIS`).
fn schemathesis() -> PathBuf {
    let st = std::env::var_os("SLICEVISOR_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/schemathesis/bin/st"));
    assert!(
        st.exists(),
        "{} is missing: run `bash scripts/test.sh` (it installs Schemathesis from PyPI into \
         target/schemathesis), or set SLICEVISOR_SCHEMATHESIS",
        st.display()
    );
    st
}

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_schema_conformance,negative_data_rejection";

#[test]
fn the_served_api_keeps_to_its_openapi_document() {
    let st = schemathesis();
    let dir = tempfile::tempdir().expect("tmp");
    let ns = Arc::new(NetNs::new("svschema"));
    let d = Daemon::start_with(dir.path(), ns.clone(), &["--guest-stop-timeout", "0"]);
    let port = "18080";
    let proxy = ns
        .command("socat")
        .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
        .arg(format!("UNIX-CONNECT:{}", d.socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (Debian package socat)");
    let _proxy = ChildGuard::new(proxy);
    let start = Instant::now();
    while !ns
        .command("bash")
        .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "socat never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = ns
        .command(&st)
        .arg("run")
        .arg(repo_root().join("docs/openapi.json"))
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args(["--checks", CHECKS])
        .args([
            "--max-examples",
            "300",
            "--seed",
            "1",
            "--request-timeout",
            "30",
        ])
        .env("NO_COLOR", "1")
        // Its cache (.schemathesis/) goes to the test's directory, not the repository.
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("schemathesis");
    let out = wait_with_timeout(run, Duration::from_secs(600));
    let summary = out
        .stdout
        .lines()
        .find(|l| l.contains(" generated, "))
        .unwrap_or("no summary line")
        .trim()
        .to_string();
    eprintln!("schemathesis: {summary}");
    assert!(
        out.status.success(),
        "schemathesis found the API and its document apart:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(summary.contains("passed"), "{summary}");
    d.stop();
}
