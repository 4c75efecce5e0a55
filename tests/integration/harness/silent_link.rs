//! A TCP relay in front of a service whose open connections can be made to die silently:
//! from then on nothing passes either way and neither end is told (no FIN, no RST), as when
//! a NAT or a firewall drops a link. Connections opened afterwards pass normally, so a
//! client that notices the dead link and connects again gets through.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct SilentLink {
    pub port: u16,
    /// Bumped by each cut: a connection opened in an older generation is dead.
    generation: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    /// Connections opened so far.
    opened: Arc<AtomicU64>,
}

impl SilentLink {
    /// Relays 127.0.0.1:`port` (a new one) to `target` (host:port).
    pub fn start(target: &str) -> SilentLink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let target = target.to_owned();
        {
            let (generation, closed, opened) = (generation.clone(), closed.clone(), opened.clone());
            std::thread::spawn(move || {
                while !closed.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let Ok(server) = TcpStream::connect(&target) else {
                                continue;
                            };
                            opened.fetch_add(1, Ordering::SeqCst);
                            let born = generation.load(Ordering::SeqCst);
                            for (from, to) in [
                                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                                (server, client),
                            ] {
                                let (generation, closed) = (generation.clone(), closed.clone());
                                std::thread::spawn(move || {
                                    pump(from, to, born, &generation, &closed)
                                });
                            }
                        }
                        Err(error) if error.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => break,
                    }
                }
            });
        }
        SilentLink {
            port,
            generation,
            closed,
            opened,
        }
    }

    /// Every connection open now dies silently.
    pub fn cut_open_connections(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Connections opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::SeqCst)
    }
}

impl Drop for SilentLink {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either end closes; once the connection's generation is cut,
/// reads nothing more and writes nothing more, holding both sockets open (the peers' buffers
/// fill, and they hear nothing) until the relay is dropped.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    born: u64,
    generation: &AtomicU64,
    closed: &AtomicBool,
) {
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let cut = || generation.load(Ordering::SeqCst) != born;
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if closed.load(Ordering::SeqCst) {
            break;
        }
        if cut() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => {
                // Bytes read at the moment of the cut are lost with the link.
                if !cut() && to.write_all(&buffer[..read]).is_err() {
                    break;
                }
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
