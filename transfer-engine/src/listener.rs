//! The engine's TCP listener: accepts connections, reads their hello and hands them to the
//! data server or the control server. Dropping it stops accepting and shuts down every
//! connection it serves, so no peer touches memory after the engine is gone.

use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::control::{self, ControlHandler};
use crate::registry::MemoryRegistry;
use crate::transport::tcp::{server, wire};

/// What the served connections need.
pub struct ServeState {
    /// Memory peers may access.
    pub registry: Arc<MemoryRegistry>,
    /// This segment's name (for error messages).
    pub name: String,
    /// Answers control requests.
    pub control: Arc<dyn ControlHandler>,
}

type Served = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

/// A running listener.
pub struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    served: Served,
}

impl Listener {
    /// Starts accepting on `listener`.
    pub fn start(listener: TcpListener, state: Arc<ServeState>) -> std::io::Result<Listener> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let served: Served = Arc::default();
        let (st, sv) = (stop.clone(), served.clone());
        let accept = std::thread::Builder::new()
            .name(format!("te-listen-{addr}"))
            .spawn(move || accept_loop(listener, &state, &st, &sv))?;
        Ok(Listener {
            addr,
            stop,
            accept: Some(accept),
            served,
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept; it sees the flag and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        let served = std::mem::take(&mut *self.served.lock());
        for (s, _) in &served {
            let _ = s.shutdown(Shutdown::Both);
        }
        for (_, t) in served {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, state: &Arc<ServeState>, stop: &AtomicBool, served: &Served) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        let st = state.clone();
        let spawned = std::thread::Builder::new()
            .name("te-serve".into())
            .spawn(move || serve_connection(stream, &st));
        match spawned {
            Ok(t) => {
                let mut list = served.lock();
                list.retain(|(_, t)| !t.is_finished());
                list.push((handle, t));
            }
            Err(e) => tracing::warn!(error = %e, "cannot start a thread for a connection"),
        }
    }
}

fn serve_connection(mut stream: TcpStream, state: &ServeState) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let mut h = [0u8; wire::HELLO_LEN];
    let kind = stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .and_then(|_| stream.read_exact(&mut h))
        .and_then(|_| stream.set_read_timeout(None))
        .map_err(|e| e.to_string())
        .and_then(|_| wire::parse_hello(&h));
    // The listener holds a clone of every served socket, so dropping ours would not close
    // the connection: shut it down explicitly whenever serving ends.
    let closer = stream.try_clone();
    let result = match kind {
        Ok(wire::ConnKind::Data) => server::serve(stream, &state.registry, &state.name),
        Ok(wire::ConnKind::Control) => control::serve(stream, state.control.as_ref()),
        Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
    };
    if let Err(e) = result {
        tracing::warn!(%peer, error = %e, "closed connection");
    }
    if let Ok(c) = closer {
        let _ = c.shutdown(Shutdown::Both);
    }
}
