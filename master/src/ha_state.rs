//! A master's place in HA as its admin routes report it (`/role`, `/ha_status`, `/leader`,
//! `/health`), in the words of Mooncake's master: a runtime state (`starting`, `candidate`,
//! `standby`, `serving`), the role it implies (`leader` or `standby`), and the leader last
//! seen (its address and view version, our leadership term).

use parking_lot::RwLock;

/// Mooncake's master runtime states that this master goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeState {
    /// Not yet campaigning.
    Starting,
    /// Campaigning with no leader known.
    Candidate,
    /// Campaigning while another master leads.
    Standby,
    /// Leader (or single master), serving clients.
    Serving,
}

impl RuntimeState {
    /// The state as Mooncake's `/ha_status` spells it.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeState::Starting => "starting",
            RuntimeState::Candidate => "candidate",
            RuntimeState::Standby => "standby",
            RuntimeState::Serving => "serving",
        }
    }

    /// The role as Mooncake's `/role` spells it: only a serving master is `leader`.
    pub fn role(self) -> &'static str {
        match self {
            RuntimeState::Serving => "leader",
            _ => "standby",
        }
    }
}

/// The leader a master knows of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderView {
    /// Its published RPC address.
    pub address: String,
    /// Its leadership term (the etcd revision of its leader key; 0 for a single master).
    pub view_version: u64,
}

/// What the admin routes read: whether campaigning has begun and the leader last seen.
/// Whether this master serves comes from the caller (the server's own flag), so the two
/// never disagree.
#[derive(Debug, Default)]
pub struct HaState {
    inner: RwLock<(bool, Option<LeaderView>)>,
}

impl HaState {
    /// Its state, given whether this master serves, and the leader last seen.
    pub fn snapshot(&self, serving: bool) -> (RuntimeState, Option<LeaderView>) {
        let (campaigning, leader) = self.inner.read().clone();
        let state = match (serving, campaigning, &leader) {
            (true, _, _) => RuntimeState::Serving,
            (false, false, _) => RuntimeState::Starting,
            (false, true, Some(_)) => RuntimeState::Standby,
            (false, true, None) => RuntimeState::Candidate,
        };
        (state, leader)
    }

    /// Campaigning has begun.
    pub fn campaigning(&self) {
        self.inner.write().0 = true;
    }

    /// The leader now seen (this master itself while it leads; `None` when there is none or
    /// etcd cannot tell).
    pub fn observed(&self, leader: Option<LeaderView>) {
        self.inner.write().1 = leader;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(a: &str, v: u64) -> LeaderView {
        LeaderView {
            address: a.into(),
            view_version: v,
        }
    }

    #[test]
    fn states_follow_campaign_leader_and_serving() {
        let s = HaState::default();
        assert_eq!(s.snapshot(false), (RuntimeState::Starting, None));
        s.campaigning();
        assert_eq!(s.snapshot(false).0, RuntimeState::Candidate);
        s.observed(Some(view("10.0.0.1:50051", 7)));
        assert_eq!(
            s.snapshot(false),
            (RuntimeState::Standby, Some(view("10.0.0.1:50051", 7)))
        );
        s.observed(Some(view("me:1", 9)));
        assert_eq!(s.snapshot(true).0, RuntimeState::Serving);
        s.observed(None);
        assert_eq!(s.snapshot(false).0, RuntimeState::Candidate);
        // A single master serves without campaigning.
        assert_eq!(HaState::default().snapshot(true).0, RuntimeState::Serving);
    }

    #[test]
    fn names_and_roles_are_mooncakes() {
        let all = [
            RuntimeState::Starting,
            RuntimeState::Candidate,
            RuntimeState::Standby,
            RuntimeState::Serving,
        ];
        let names: Vec<_> = all.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["starting", "candidate", "standby", "serving"]);
        let roles: Vec<_> = all.iter().map(|s| s.role()).collect();
        assert_eq!(roles, ["standby", "standby", "standby", "leader"]);
    }
}
