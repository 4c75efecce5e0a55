//! docker-compose.yml stays valid: checked by Debian's docker-compose, as users' Docker
//! would read it.

use std::io::Write;
use std::process::Command;

use crate::harness::{repo_root, run};

#[test]
fn the_compose_file_is_valid_and_ordered_by_health() {
    let output = run(Command::new("bash")
        .arg("scripts/check-compose")
        .current_dir(repo_root()));
    assert!(output.status.success(), "scripts/check-compose failed");
}

/// A published port without a host address binds every interface of the host.
#[test]
fn the_compose_rules_refuse_a_port_published_on_every_interface() {
    let config = "services:\n  postgres:\n    ports:\n    - 5432:5432/tcp\n    - 127.0.0.1:5433:5432/tcp\n    - published: 8080\n      target: 8080\n";
    let mut rules = Command::new("python3")
        .arg("scripts/compose_rules.py")
        .current_dir(repo_root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    rules
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let output = rules.wait_with_output().unwrap();
    let problems = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{problems}");
    assert!(
        problems.contains("postgres publishes 5432:5432/tcp on every host interface"),
        "{problems}"
    );
    assert!(
        problems.contains("postgres publishes 8080 on every host interface"),
        "{problems}"
    );
    assert!(
        !problems.contains("5433"),
        "a loopback port is fine: {problems}"
    );
}
