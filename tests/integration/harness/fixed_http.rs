//! An HTTP server that answers every request with the same response, for feeding ingest a
//! page that the fake API would never generate. It runs on a thread of its own, so a test
//! may block on the walflow process while it serves.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

pub struct FixedHttp {
    /// `http://127.0.0.1:PORT/api/`
    pub url: String,
}

impl FixedHttp {
    /// Serves `body` as JSON; with `declared_length` false the body has no Content-Length
    /// and ends when the connection closes.
    pub fn serve(body: Vec<u8>, declared_length: bool) -> FixedHttp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let url = format!("http://{}/api/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                // The request line and headers, up to the blank line.
                while reader.read_line(&mut line).is_ok_and(|read| read > 2) {
                    line.clear();
                }
                let length = if declared_length {
                    format!("Content-Length: {}\r\n", body.len())
                } else {
                    String::new()
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}Connection: close\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        FixedHttp { url }
    }
}
