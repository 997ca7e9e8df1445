//! The engine's TCP listener: accepts connections, reads their hello and hands them to the
//! data server or the control server. Dropping it stops accepting and shuts down every
//! connection it serves, so no peer touches memory after the engine is gone.
//!
//! Served sockets probe idle peers (TCP keepalive) and give up on data a peer leaves
//! unacknowledged (`TCP_USER_TIMEOUT`), so a crashed or partitioned initiator host costs its
//! serving threads and descriptors for about a minute, not until the kernel's retransmissions
//! end (~15 min) or forever (an idle connection). Accept errors (EMFILE when the descriptors
//! run out: the pending connection stays queued) back off instead of spinning.

use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use socket2::{SockRef, TcpKeepalive};

use crate::control::{self, ControlHandler};
use crate::registry::MemoryRegistry;
use crate::transport::tcp::{server, wire};

/// Mooncake's variables bounding the port an engine picks when its address names none (so
/// that firewall rules can name the range); either alone takes Mooncake's default for the
/// other (15000 and 17000).
pub const PORT_RANGE_ENV: (&str, &str) = ("MC_MIN_RPC_PORT", "MC_MAX_RPC_PORT");

/// The port range from the values of [`PORT_RANGE_ENV`]: `None` when neither is set; an
/// error names a value that is not a port or a range that is empty.
pub fn port_range(min: Option<&str>, max: Option<&str>) -> Result<Option<(u16, u16)>, String> {
    if min.is_none() && max.is_none() {
        return Ok(None);
    }
    let parse = |v: Option<&str>, name: &str, default: u16| match v {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("{name}={v:?} is not a port")),
    };
    let lo = parse(min, PORT_RANGE_ENV.0, 15000)?;
    let hi = parse(max, PORT_RANGE_ENV.1, 17000)?;
    if lo > hi {
        return Err(format!(
            "{}={lo} is above {}={hi}",
            PORT_RANGE_ENV.0, PORT_RANGE_ENV.1
        ));
    }
    Ok(Some((lo, hi)))
}

/// Binds `addr`; when it names no port and a range is set ([`PORT_RANGE_ENV`]), the first
/// free port of the range from a random start.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let env = |n: &str| std::env::var(n).ok();
    let range = port_range(
        env(PORT_RANGE_ENV.0).as_deref(),
        env(PORT_RANGE_ENV.1).as_deref(),
    )
    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    match range {
        Some((lo, hi)) if addr.port() == 0 => bind_in_range(lo, hi, rand::random(), |p| {
            TcpListener::bind(SocketAddr::new(addr.ip(), p))
        }),
        _ => TcpListener::bind(addr),
    }
}

/// Tries every port of `lo..=hi` once, starting at `lo + start % size`; the last error when
/// none binds.
fn bind_in_range<L>(
    lo: u16,
    hi: u16,
    start: u32,
    mut try_bind: impl FnMut(u16) -> std::io::Result<L>,
) -> std::io::Result<L> {
    let size = u32::from(hi - lo) + 1;
    let mut last = None;
    for i in 0..size {
        let port = lo + ((start % size + i) % size) as u16;
        match try_bind(port) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port in {lo}..={hi} (MC_MIN_RPC_PORT..MC_MAX_RPC_PORT): {last:?}"),
    ))
}

/// What the served connections need.
pub struct ServeState {
    /// Memory peers may access.
    pub registry: Arc<MemoryRegistry>,
    /// This segment's name (for error messages).
    pub name: String,
    /// This engine's incarnation: data connections naming another are refused.
    pub incarnation: u64,
    /// Answers control requests.
    pub control: Arc<dyn ControlHandler>,
}

type Served = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

/// Idle time before a served socket's first keepalive probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between unanswered keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the peer is taken for gone.
const KEEPALIVE_PROBES: u32 = 3;
/// How long sent data may stay unacknowledged before the connection is dropped (as long as
/// the keepalive probing, so both detect a dead peer in about the same time).
const USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Sets keepalive and the unacknowledged-data timeout on a served socket (and on the
/// initiating side's data connections, which then notice a dead peer while idle).
pub(crate) fn watch_peer(stream: &TcpStream) -> std::io::Result<()> {
    let sock = SockRef::from(stream);
    sock.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES),
    )?;
    sock.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

/// The pause after a failed accept: doubling from [`AcceptBackoff::FIRST`] up to
/// [`AcceptBackoff::MAX`] while failures continue, and one log line per burst of them.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(1);

    /// After a failed accept: how long to pause, and whether this failure starts a burst
    /// (the one to log).
    fn failed(&mut self) -> (Duration, bool) {
        let doublings = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        let pause = Self::FIRST.saturating_mul(1 << doublings).min(Self::MAX);
        (pause, self.failures == 1)
    }

    /// After a successful accept: how many failures the burst it ends had (0: none).
    fn succeeded(&mut self) -> u32 {
        std::mem::take(&mut self.failures)
    }
}

/// Raises this process's open-files limit to its hard limit, once (each peer costs a few
/// sockets; a 1024 soft limit runs out at a few hundred peers).
pub(crate) fn raise_open_files_limit() {
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(
        || match mooncake_sys::open_files::raise_open_files_limit() {
            Ok(soft) => tracing::debug!(limit = soft, "open-files limit (RLIMIT_NOFILE)"),
            Err(e) => tracing::debug!(error = %e, "cannot raise the open-files limit"),
        },
    );
}

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
    let mut backoff = AcceptBackoff::default();
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                let (pause, first) = backoff.failed();
                if first {
                    tracing::warn!(error = %e, "accept failed; retrying with backoff until it works");
                }
                std::thread::sleep(pause);
                continue;
            }
        };
        let failures = backoff.succeeded();
        if failures > 0 {
            tracing::info!(failures, "accepting again");
        }
        if let Err(e) = watch_peer(&stream) {
            tracing::debug!(error = %e, "cannot set keepalive on a served connection");
        }
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
        Ok((wire::ConnKind::Data, inc)) if inc != state.incarnation => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "data connection for incarnation {inc:#x} of {}; this is {:#x} (the peer's \
                     descriptor is from before a restart)",
                state.name, state.incarnation
            ),
        )),
        Ok((wire::ConnKind::Data, _)) => server::serve(stream, &state.registry, &state.name),
        Ok((wire::ConnKind::Control, _)) => control::serve(stream, state.control.as_ref()),
        Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
    };
    if let Err(e) = result {
        tracing::warn!(%peer, error = %e, "closed connection");
    }
    if let Ok(c) = closer {
        let _ = c.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_from_mooncakes_variables() {
        assert_eq!(port_range(None, None), Ok(None));
        assert_eq!(port_range(Some("16000"), None), Ok(Some((16000, 17000))));
        assert_eq!(port_range(None, Some(" 15100 ")), Ok(Some((15000, 15100))));
        assert!(port_range(Some("x"), None)
            .unwrap_err()
            .contains("MC_MIN_RPC_PORT"));
        assert!(port_range(Some("0"), None).is_err());
        assert!(port_range(Some("17001"), None)
            .unwrap_err()
            .contains("above"));
    }

    #[test]
    fn a_range_is_walked_once_from_a_random_start() {
        let mut tried = Vec::new();
        let r = bind_in_range(100, 104, 7, |p| {
            tried.push(p);
            if p == 101 {
                Ok(p)
            } else {
                Err(std::io::Error::from(std::io::ErrorKind::AddrInUse))
            }
        });
        assert_eq!(r.unwrap(), 101);
        assert_eq!(tried, [102, 103, 104, 100, 101]);
        let mut n = 0;
        let none = bind_in_range(100, 104, 0, |_| -> std::io::Result<()> {
            n += 1;
            Err(std::io::Error::from(std::io::ErrorKind::AddrInUse))
        });
        assert_eq!(n, 5, "every port once");
        assert!(none.unwrap_err().to_string().contains("100..=104"));
    }
    use crate::control::{read_frame, write_frame, ControlRequest, ControlResponse};
    use crate::descriptor::SegmentDescriptor;
    use crate::transport::tcp::wire::{hello, ConnKind};
    use std::io::Write;

    #[test]
    fn accept_backoff_doubles_to_its_cap_and_logs_once_per_burst() {
        let mut b = AcceptBackoff::default();
        let burst: Vec<(u64, bool)> = (0..7)
            .map(|_| b.failed())
            .map(|(d, first)| (d.as_millis() as u64, first))
            .collect();
        assert_eq!(
            burst,
            [
                (50, true),
                (100, false),
                (200, false),
                (400, false),
                (800, false),
                (1000, false),
                (1000, false)
            ]
        );
        for _ in 0..100 {
            assert_eq!(b.failed(), (AcceptBackoff::MAX, false));
        }
        assert_eq!(b.succeeded(), 107);
        assert_eq!(b.succeeded(), 0);
        assert_eq!(b.failed(), (AcceptBackoff::FIRST, true));
    }

    /// Answers with a descriptor of no buffers.
    struct Empty(SocketAddr);

    impl ControlHandler for Empty {
        fn descriptor(&self) -> SegmentDescriptor {
            SegmentDescriptor {
                name: "served".into(),
                tcp_addr: self.0,
                incarnation: 1,
                buffers: Vec::new(),
                transports: Default::default(),
            }
        }
        fn transport(&self, name: &str, _: &[u8]) -> Result<Vec<u8>, String> {
            Err(format!("no transport {name}"))
        }
    }

    #[test]
    fn served_sockets_probe_their_peer() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let state = Arc::new(ServeState {
            registry: Arc::default(),
            name: "served".into(),
            incarnation: 1,
            control: Arc::new(Empty(addr)),
        });
        let listener = Listener::start(tcp, state).unwrap();
        let mut peer = TcpStream::connect(addr).unwrap();
        peer.write_all(&hello(ConnKind::Control, 0)).unwrap();
        write_frame(&mut peer, &ControlRequest::GetDescriptor).unwrap();
        let answer: Option<ControlResponse> = read_frame(&mut peer).unwrap();
        assert!(matches!(answer, Some(ControlResponse::Descriptor(d)) if d.name == "served"));
        // Served, so accepted; the accept thread lists it right after starting its thread.
        let served = (0..10_000)
            .find_map(|_| {
                let list = listener.served.lock();
                let s = list.first().map(|(s, _)| s.try_clone().unwrap());
                drop(list);
                s.or_else(|| {
                    std::thread::sleep(Duration::from_millis(1));
                    None
                })
            })
            .expect("the connection is never listed");
        assert_eq!(served.peer_addr().unwrap(), peer.local_addr().unwrap());
        let sock = SockRef::from(&served);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
        // A socket nobody configured reads differently (the checks above can fail).
        assert!(!SockRef::from(&peer).keepalive().unwrap());
    }
}
