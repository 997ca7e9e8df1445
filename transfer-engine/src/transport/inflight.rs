//! The table of parts sent on one connection and not yet answered, with their deadlines.
//!
//! Pure bookkeeping with the clock passed in: a connection's sender inserts, its receiver
//! removes, a watchdog asks whether the oldest part is past its deadline, and whoever ends the
//! connection closes the table and gets every part still in it to fail. Once closed, inserts
//! are refused so that no part can slip in unanswered.

use std::collections::BTreeMap;
use std::time::Instant;

/// Why a table was closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The oldest part passed its deadline.
    TimedOut,
    /// The connection failed.
    Failed(String),
}

/// Parts in flight, keyed by id .
#[derive(Debug)]
pub struct InFlight<T> {
    parts: BTreeMap<u64, (Instant, T)>,
    /// Deadline of the part whose payload the receiver is reading (taken out of the table,
    /// still watched).
    receiving: Option<Instant>,
    closed: Option<CloseReason>,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            parts: BTreeMap::new(),
            receiving: None,
            closed: None,
        }
    }
}

impl<T> InFlight<T> {
    /// Adds a part; gives it back with the reason if the table is closed.
    pub fn insert(&mut self, id: u64, deadline: Instant, part: T) -> Result<(), (T, CloseReason)> {
        if let Some(reason) = &self.closed {
            return Err((part, reason.clone()));
        }
        self.parts.insert(id, (deadline, part));
        Ok(())
    }

    /// Takes the part answered by a response.
    pub fn remove(&mut self, id: u64) -> Option<T> {
        self.parts.remove(&id).map(|(_, p)| p)
    }

    /// Takes the part answered by a response whose payload is still to be read: its deadline
    /// stays watched until [`InFlight::received`].
    pub fn remove_receiving(&mut self, id: u64) -> Option<T> {
        let (deadline, part) = self.parts.remove(&id)?;
        self.receiving = Some(deadline);
        Some(part)
    }

    /// The payload being read has arrived.
    pub fn received(&mut self) {
        self.receiving = None;
    }

    /// Whether some part of an open table is past its deadline at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.closed.is_none() && self.receiving.is_some_and(|d| d <= now)
            || self.parts.values().any(|(d, _)| *d <= now)
    }

    /// Parts in flight.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether no part is in flight.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Whether no part is in flight and no payload is being read.
    pub fn is_quiet(&self) -> bool {
        self.parts.is_empty() && self.receiving.is_none()
    }

    /// The reason the table was closed, if it was.
    pub fn closed(&self) -> Option<&CloseReason> {
        self.closed.as_ref()
    }

    /// Closes the table (keeping the first reason) and takes every part in it.
    pub fn close(&mut self, reason: CloseReason) -> (CloseReason, Vec<T>) {
        let reason = self.closed.get_or_insert(reason).clone();
        // The receiver's read of that payload fails with the connection; nothing to watch.
        self.receiving = None;
        let parts = std::mem::take(&mut self.parts)
            .into_values()
            .map(|(_, p)| p)
            .collect();
        (reason, parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deadlines_and_close() {
        let t0 = Instant::now();
        let mut f = InFlight::default();
        f.insert(1, t0 + Duration::from_secs(2), "a").unwrap();
        f.insert(2, t0 + Duration::from_secs(3), "b").unwrap();
        assert!(!f.expired(t0 + Duration::from_secs(1)));
        assert!(f.expired(t0 + Duration::from_secs(2)));
        assert_eq!(f.remove(1), Some("a"));
        assert_eq!(f.remove(1), None);
        assert!(!f.expired(t0 + Duration::from_secs(2)));
        f.insert(4, t0 + Duration::from_secs(1), "d").unwrap();
        assert_eq!(f.remove_receiving(4), Some("d"));
        assert!(
            f.expired(t0 + Duration::from_secs(1)),
            "a part being received is still watched"
        );
        f.received();
        assert!(!f.expired(t0 + Duration::from_secs(2)));
        let (reason, rest) = f.close(CloseReason::TimedOut);
        assert_eq!(reason, CloseReason::TimedOut);
        assert_eq!(rest, vec!["b"]);
        let (again, none) = f.close(CloseReason::Failed("later".into()));
        assert_eq!(again, CloseReason::TimedOut, "first reason wins");
        assert!(none.is_empty());
        assert_eq!(
            f.insert(3, t0, "c"),
            Err(("c", CloseReason::TimedOut)),
            "closed table refuses parts"
        );
    }

    #[test]
    fn closing_mid_payload_leaves_a_quiet_table_with_nothing_to_watch() {
        let t0 = Instant::now();
        let mut f = InFlight::default();
        f.insert(1, t0, "a").unwrap();
        assert_eq!(f.remove_receiving(1), Some("a"));
        assert!(!f.is_quiet());
        f.close(CloseReason::Failed("peer died".into()));
        assert!(f.is_quiet(), "the connection can be reaped");
        assert!(
            !f.expired(t0 + Duration::from_secs(60)),
            "and is not timed out again"
        );
    }
}
