//! A master that goes silent without closing the connection (its host died, a partition, a
//! stopped process): the client must leave that connection and reach the master again
//! through a new one. A TCP proxy between client and an embedded master plays the silent
//! network: frozen, it keeps its existing connections open but forwards nothing on them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mooncake_master::client::ClientOptions;
use mooncake_master::{ErrorCode, MasterClient, MasterConfig, MasterServer, Segment};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{tcp::OwnedReadHalf, tcp::OwnedWriteHalf, TcpListener, TcpStream};
use uuid::Uuid;

/// Forwards connections to one address until told otherwise.
struct Proxy {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// The frozen flag of each connection made so far.
    links: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// New connections are accepted and held, but not forwarded.
    mute: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(to: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            links: Arc::default(),
            mute: Arc::default(),
        };
        let (accepted, links, mute) = (
            proxy.accepted.clone(),
            proxy.links.clone(),
            proxy.mute.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                if mute.load(Ordering::SeqCst) {
                    tokio::spawn(async move {
                        let _held = client;
                        std::future::pending::<()>().await;
                    });
                    continue;
                }
                let master = TcpStream::connect(to).await.unwrap();
                let frozen = Arc::new(AtomicBool::new(false));
                links.lock().push(frozen.clone());
                let (cr, cw) = client.into_split();
                let (mr, mw) = master.into_split();
                tokio::spawn(pump(cr, mw, frozen.clone()));
                tokio::spawn(pump(mr, cw, frozen));
            }
        });
        proxy
    }

    /// Existing connections stay open and forward nothing from now on.
    fn freeze(&self) {
        for f in self.links.lock().iter() {
            f.store(true, Ordering::SeqCst);
        }
    }

    fn mute_new(&self, on: bool) {
        self.mute.store(on, Ordering::SeqCst);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` until either ends; once frozen, holds both open and copies nothing.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn seg() -> Segment {
    Segment {
        id: Uuid::new_v4(),
        name: "127.0.0.1:7100".into(),
        base: 0x10_0000,
        size: 1 << 20,
    }
}

/// A master behind a proxy and a client of it, mounted and answering.
async fn connected(opts: ClientOptions) -> (mooncake_master::RunningMaster, Proxy, MasterClient) {
    let master = MasterServer::start(MasterConfig::default()).await.unwrap();
    let proxy = Proxy::start(master.rpc_addr()).await;
    let client = MasterClient::connect_with(&proxy.addr.to_string(), opts)
        .await
        .unwrap();
    client.mount_segment(Uuid::new_v4(), seg()).await.unwrap();
    assert_eq!(client.exist_key("k".into()).await, Ok(false));
    assert_eq!(proxy.accepted(), 1);
    (master, proxy, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_hears_nothing_leaves_its_connection_and_the_next_reconnects() {
    let opts = ClientOptions {
        rpc_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let (master, proxy, client) = connected(opts).await;
    proxy.freeze();
    assert_eq!(client.exist_key("k".into()).await, Err(ErrorCode::RpcFail));
    assert_eq!(
        client.connected_addr(),
        None,
        "the silent connection is left"
    );
    // Before, this call went to the frozen connection too, and so did every later one.
    assert_eq!(client.exist_key("k".into()).await, Ok(false));
    assert_eq!(proxy.accepted(), 2, "through a new connection");
    assert_eq!(
        client.connected_addr().as_deref(),
        Some(proxy.addr.to_string().as_str())
    );
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_ping_leaves_the_connection_long_before_the_call_deadline() {
    let opts = ClientOptions {
        rpc_timeout: Duration::from_secs(3600),
        ping_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let (master, proxy, client) = connected(opts).await;
    proxy.freeze();
    // A liveness bound, not a timing: the call deadline is an hour.
    let ping = tokio::time::timeout(Duration::from_secs(60), client.ping(Uuid::new_v4()));
    assert!(matches!(ping.await, Ok(Err(ErrorCode::RpcFail))));
    assert_eq!(client.exist_key("k".into()).await, Ok(false));
    assert_eq!(proxy.accepted(), 2);
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_connection_share_one_attempt_then_back_off() {
    let opts = ClientOptions {
        rpc_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        reconnect_backoff: Duration::from_secs(2),
        ..Default::default()
    };
    let (master, proxy, client) = connected(opts).await;
    proxy.freeze();
    proxy.mute_new(true);
    assert_eq!(client.exist_key("k".into()).await, Err(ErrorCode::RpcFail));
    // Eight callers find no connection at once: one connect attempt (its handshake never
    // answered), whose failure they all get. Before, each tried in turn: eight attempts.
    let calls = (0..8).map(|i| client.exist_key(format!("k{i}")));
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(|r| *r == Err(ErrorCode::RpcFail)));
    assert_eq!(proxy.accepted(), 2, "one attempt for all eight");
    // Right after a failed attempt, calls fail without trying.
    assert_eq!(client.exist_key("k".into()).await, Err(ErrorCode::RpcFail));
    assert_eq!(proxy.accepted(), 2, "no attempt during the backoff");
    // Once the network answers again and the backoff is over, calls work.
    proxy.mute_new(false);
    let mut answer = Err(ErrorCode::RpcFail);
    for _ in 0..100 {
        answer = client.exist_key("k".into()).await;
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer, Ok(false));
    assert_eq!(proxy.accepted(), 3, "one more attempt, which worked");
    master.stop().await;
}
