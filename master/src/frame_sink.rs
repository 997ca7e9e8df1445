//! Per-connection frame output shared by the RPC client and server.
//!
//! A task with a frame writes it to the socket itself when nothing else is queued or being
//! written (one non-blocking write, no task hop); otherwise it queues the frame for the
//! connection's writer task, which coalesces queued frames into few writes. The direct write
//! never awaits while holding the socket, so a cancelled caller cannot leave half a frame;
//! what a direct write could not send at once is kept as a carry that the writer task sends
//! before anything else.

use std::io;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, Mutex};

/// The connection is closed (its writer task ended).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    /// The writer task is gone.
    #[error("connection writer closed")]
    Closed,
    /// The socket refused the write.
    #[error("writing frame: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug)]
struct Output {
    w: OwnedWriteHalf,
    /// Tail of a frame a direct write left unsent; goes out before any other byte.
    carry: Vec<u8>,
}

/// Sending side: cheap to share behind an `Arc` or own in the reader task.
#[derive(Debug)]
pub(crate) struct FrameSink {
    tx: mpsc::Sender<Vec<u8>>,
    out: Arc<Mutex<Output>>,
}

/// The writer task's half; run it with [`FrameWriter::run`].
#[derive(Debug)]
pub(crate) struct FrameWriter {
    rx: mpsc::Receiver<Vec<u8>>,
    out: Arc<Mutex<Output>>,
}

/// Splits a write half into a sink and its writer; at most `queued` frames wait in the queue.
pub(crate) fn frame_sink(w: OwnedWriteHalf, queued: usize) -> (FrameSink, FrameWriter) {
    let (tx, rx) = mpsc::channel(queued);
    let out = Arc::new(Mutex::new(Output {
        w,
        carry: Vec::new(),
    }));
    (
        FrameSink {
            tx,
            out: out.clone(),
        },
        FrameWriter { rx, out },
    )
}

impl FrameSink {
    /// Sends a frame: written directly when the connection is idle, else queued (waits
    /// while the queue is full).
    pub(crate) async fn send(&self, frame: Vec<u8>) -> Result<(), SinkError> {
        match self.try_direct(frame)? {
            None => Ok(()),
            Some(frame) => self.queue(frame).await,
        }
    }

    /// Queues a frame for the writer task (lets a burst coalesce into one write).
    pub(crate) async fn queue(&self, frame: Vec<u8>) -> Result<(), SinkError> {
        self.tx.send(frame).await.map_err(|_| SinkError::Closed)
    }

    /// Writes `frame` now if nothing is queued or being written; gives it back otherwise.
    fn try_direct(&self, frame: Vec<u8>) -> Result<Option<Vec<u8>>, SinkError> {
        if self.tx.is_closed() {
            return Err(SinkError::Closed);
        }
        if self.tx.capacity() != self.tx.max_capacity() {
            return Ok(Some(frame));
        }
        let Ok(mut out) = self.out.try_lock() else {
            return Ok(Some(frame));
        };
        if !out.carry.is_empty() {
            return Ok(Some(frame));
        }
        let sent = match out.w.try_write(&frame) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e.into()),
        };
        if sent == frame.len() {
            return Ok(None);
        }
        out.carry.extend_from_slice(&frame[sent..]);
        drop(out);
        // Wake the writer for the carry; a full queue wakes it anyway.
        match self.tx.try_send(Vec::new()) {
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SinkError::Closed),
            _ => Ok(None),
        }
    }
}

impl FrameWriter {
    /// Writes queued frames (and any carry) until every sink is dropped, then shuts the
    /// write half down.
    pub(crate) async fn run(mut self) -> io::Result<()> {
        let mut batch = Vec::with_capacity(64);
        let mut buf = Vec::new();
        loop {
            let n = self.rx.recv_many(&mut batch, 64).await;
            let mut out = self.out.lock().await;
            let Output { w, carry } = &mut *out;
            batch.retain(|f| !f.is_empty());
            if carry.is_empty() && batch.len() == 1 {
                w.write_all(&batch[0]).await?;
            } else {
                buf.clear();
                buf.append(carry);
                for f in &batch {
                    buf.extend_from_slice(f);
                }
                if !buf.is_empty() {
                    w.write_all(&buf).await?;
                }
                if buf.capacity() > 1 << 20 {
                    buf = Vec::new();
                }
            }
            batch.clear();
            if n == 0 {
                return w.shutdown().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpSocket};

    /// Frames larger than the socket buffer, sent concurrently while the peer reads late, each
    /// arrive whole: a direct write's unsent tail goes out before any other frame.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_frames_arrive_whole() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // A small send buffer makes direct writes partial, so carries happen.
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_send_buffer_size(32 * 1024).unwrap();
        let (client, server) = tokio::join!(sock.connect(addr), l.accept());
        let (_rd, wr) = client.unwrap().into_split();
        let (mut peer, _) = server.unwrap();
        let (sink, writer) = frame_sink(wr, 4);
        let writer = tokio::spawn(writer.run());
        let sink = Arc::new(sink);
        const FRAMES: usize = 24;
        const LEN: usize = 300 * 1024;
        let mut senders = Vec::new();
        for i in 0..FRAMES {
            let sink = sink.clone();
            senders.push(tokio::spawn(async move {
                // Frame: its index byte repeated; a torn frame shows as mixed bytes.
                sink.send(vec![i as u8; LEN]).await.unwrap();
            }));
        }
        let mut seen = [false; FRAMES];
        let mut frame = vec![0u8; LEN];
        for _ in 0..FRAMES {
            peer.read_exact(&mut frame).await.unwrap();
            let i = frame[0] as usize;
            assert!(frame.iter().all(|&b| b as usize == i), "torn frame {i}");
            assert!(!seen[i], "frame {i} twice");
            seen[i] = true;
        }
        for s in senders {
            s.await.unwrap();
        }
        drop(sink);
        writer.await.unwrap().unwrap();
        assert_eq!(peer.read(&mut frame).await.unwrap(), 0, "writer shut down");
    }
}
