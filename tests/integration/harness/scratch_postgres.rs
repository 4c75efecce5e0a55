//! A throwaway Postgres server of the same installed version, for tests that need settings
//! the shared server must not have (for example `wal_level = replica`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct ScratchPostgres {
    pub url: String,
    directory: tempfile::TempDir,
    bin: PathBuf,
}

impl ScratchPostgres {
    /// initdb and start a server on a free loopback port with `settings` (`name=value`).
    pub fn start(settings: &[&str]) -> ScratchPostgres {
        let bin = postgres_bin_dir();
        let directory = tempfile::Builder::new()
            .prefix("walflow-scratch-pg")
            .tempdir()
            .unwrap();
        let data = directory.path().join("data");
        let port = free_port();
        if running_as_root() {
            // Postgres refuses to run as root: hand the directory to the postgres user.
            run_checked(
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres")
                    .arg(directory.path()),
            );
        }
        run_checked(
            as_server_user(&bin.join("initdb"))
                .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
                .arg(&data),
        );
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={}",
            directory.path().display()
        );
        for setting in settings {
            options.push_str(&format!(" -c {setting}"));
        }
        run_checked(
            as_server_user(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(directory.path().join("server.log"))
                .arg("-o")
                .arg(options)
                .args(["-w", "start"]),
        );
        ScratchPostgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            directory,
            bin,
        }
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        let _ = as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.directory.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn postgres_bin_dir() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.retain(|bin| bin.join("initdb").exists());
    candidates.sort();
    candidates
        .pop()
        .expect("no /usr/lib/postgresql/*/bin/initdb: run scripts/services up")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| output.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn as_server_user(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn run_checked(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
