//! Client liveness: clients ping about once a second; one silent for longer than the client
//! TTL is expired (the master drops its segments and their replicas), and since it is then
//! unknown its next Ping answers NEED_REMOUNT.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::proto::ClientId;

/// Last heartbeat of every known client.
#[derive(Debug)]
pub struct Liveness {
    ttl_ms: u64,
    clients: Mutex<HashMap<ClientId, u64>>,
}

impl Liveness {
    /// Clients expire after `ttl_ms` without a heartbeat.
    pub fn new(ttl_ms: u64) -> Self {
        Liveness {
            ttl_ms,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Records a heartbeat; `false` if the client was unknown (it must remount).
    pub fn ping(&self, client: ClientId, now_ms: u64) -> bool {
        match self.clients.lock().get_mut(&client) {
            Some(t) => {
                *t = (*t).max(now_ms);
                true
            }
            None => false,
        }
    }

    /// Makes the client known (mount, remount).
    pub fn register(&self, client: ClientId, now_ms: u64) {
        let mut c = self.clients.lock();
        let t = c.entry(client).or_insert(now_ms);
        *t = (*t).max(now_ms);
    }

    /// Forgets a client (replaced by its restart): its next ping answers NEED_REMOUNT.
    pub fn forget(&self, client: ClientId) {
        self.clients.lock().remove(&client);
    }

    /// Whether the client is known and not expired.
    pub fn is_alive(&self, client: ClientId) -> bool {
        self.clients.lock().contains_key(&client)
    }

    /// Removes and returns the clients silent for longer than the TTL.
    pub fn expire(&self, now_ms: u64) -> Vec<ClientId> {
        let mut dead = Vec::new();
        self.clients.lock().retain(|id, last| {
            let alive = now_ms.saturating_sub(*last) <= self.ttl_ms;
            if !alive {
                dead.push(*id);
            }
            alive
        });
        dead
    }

    /// Number of known clients.
    pub fn len(&self) -> usize {
        self.clients.lock().len()
    }

    /// Whether no client is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_clients_expire_and_become_unknown() {
        let l = Liveness::new(10_000);
        let (a, b) = (ClientId::new_v4(), ClientId::new_v4());
        assert!(!l.ping(a, 0), "unknown before registering");
        l.register(a, 0);
        l.register(b, 0);
        assert!(l.ping(a, 9_000));
        assert!(l.expire(10_000).is_empty());
        assert_eq!(l.expire(10_001), vec![b]);
        assert!(l.is_alive(a) && !l.is_alive(b));
        assert!(!l.ping(b, 10_002), "expired client must remount");
    }
}
