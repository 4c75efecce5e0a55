//! docker-compose.yml stays valid: checked by Debian's docker-compose, as users' Docker
//! would read it.

use std::process::Command;

use crate::harness::{repo_root, run};

#[test]
fn the_compose_file_is_valid_and_ordered_by_health() {
    let output = run(Command::new("bash")
        .arg("scripts/check-compose")
        .current_dir(repo_root()));
    assert!(output.status.success(), "scripts/check-compose failed");
}
