//! A `walflow fake-api` process of its own for one test, on a free port, stopped on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct FakeApi {
    pub url: String,
    child: Child,
}

impl FakeApi {
    /// Starts `walflow fake-api` with extra flags (fault rates and so on).
    pub fn start(flags: &[&str]) -> FakeApi {
        let mut child = Command::new(env!("CARGO_BIN_EXE_walflow"))
            .args(["fake-api", "--listen", "127.0.0.1:0"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn walflow fake-api");
        let stdout = child.stdout.take().expect("fake-api stdout");
        let mut first_line = String::new();
        BufReader::new(stdout)
            .read_line(&mut first_line)
            .expect("read fake-api's address");
        let url = first_line
            .trim()
            .strip_prefix("fake-api: serving ")
            .unwrap_or_else(|| panic!("unexpected first line from fake-api: {first_line:?}"))
            .to_owned();
        FakeApi { url, child }
    }

    /// Fetches one page straight from the API, as an independent view of what ingest saw.
    pub async fn page(&self, results: u32, page: u32, seed: &str) -> Vec<serde_json::Value> {
        let url = format!("{}?results={results}&page={page}&seed={seed}", self.url);
        // Faults may be switched on: ask until a page arrives whole.
        for _ in 0..50 {
            if let Ok(response) = reqwest::get(&url).await {
                if response.status().is_success() {
                    if let Ok(body) = response.json::<serde_json::Value>().await {
                        return body["results"].as_array().cloned().unwrap_or_default();
                    }
                }
            }
        }
        panic!("could not fetch {url}");
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
