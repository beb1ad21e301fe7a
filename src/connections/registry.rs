//! The open connections, oldest first, by client address: what the per-address bound and
//! shedding decide on.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::activity::ConnectionActivity;

/// The open connections, oldest first, and how many each client address holds.
#[derive(Default)]
pub(super) struct OpenConnections(Mutex<Registry>);

#[derive(Default)]
struct Registry {
    next_id: u64,
    by_age: BTreeMap<u64, (IpAddr, ConnectionActivity)>,
    per_ip: HashMap<IpAddr, usize>,
}

impl OpenConnections {
    /// Registers a connection from `ip`, unless that address holds `max_per_ip` already.
    pub(super) fn admit(&self, ip: IpAddr, max_per_ip: usize) -> Option<(u64, ConnectionActivity)> {
        let mut registry = self.0.lock();
        let held = registry.per_ip.entry(ip).or_default();
        if max_per_ip > 0 && *held >= max_per_ip {
            return None;
        }
        *held += 1;
        registry.next_id += 1;
        let id = registry.next_id;
        let activity = ConnectionActivity::new();
        registry.by_age.insert(id, (ip, activity.clone()));
        Some((id, activity))
    }

    /// The position of the first of `ips` that holds the fewest connections; `None` when
    /// there are none.
    pub(super) fn lightest(&self, ips: impl Iterator<Item = IpAddr>) -> Option<usize> {
        let registry = self.0.lock();
        let mut best: Option<(usize, usize)> = None;
        for (index, ip) in ips.enumerate() {
            let held = registry
                .per_ip
                .get(&ip.to_canonical())
                .copied()
                .unwrap_or(0);
            if best.is_none_or(|(fewest, _)| held < fewest) {
                best = Some((held, index));
                if held == 0 {
                    break;
                }
            }
        }
        best.map(|(_, index)| index)
    }

    /// Connections open from `ip`.
    pub(super) fn held_by(&self, ip: IpAddr) -> usize {
        self.0.lock().per_ip.get(&ip).copied().unwrap_or(0)
    }

    pub(super) fn remove(&self, id: u64, ip: IpAddr) {
        let mut registry = self.0.lock();
        registry.by_age.remove(&id);
        if let Some(held) = registry.per_ip.get_mut(&ip) {
            *held -= 1;
            if *held == 0 {
                registry.per_ip.remove(&ip);
            }
        }
    }

    /// Closes a connection that is not computing an answer, and hands its slot on at once
    /// (it closes on its next poll, without giving the slot back): the listener goes on
    /// accepting instead of waiting for it, so the backlog drains at the rate of accepts.
    /// The victim is the oldest such connection of the address that holds the most, so a
    /// flood from one address sheds its own connections and not a newcomer's; among equals,
    /// the oldest. False if every connection is computing.
    pub(super) fn shed_oldest(&self, slots: &Semaphore) -> bool {
        let mut registry = self.0.lock();
        let heaviest = registry
            .per_ip
            .iter()
            .max_by_key(|&(_, &held)| held)
            .map(|(&ip, _)| ip);
        let victim = {
            let mut candidates = registry.by_age.iter().filter(|(_, (_, a))| a.sheddable());
            let oldest = candidates.clone().next().map(|(&id, _)| id);
            candidates
                .find(|(_, (ip, _))| Some(*ip) == heaviest)
                .map(|(&id, _)| id)
                .or(oldest)
        };
        let Some((_, activity)) = victim.and_then(|id| registry.by_age.remove(&id)) else {
            return false;
        };
        activity
            .shed_marked
            .store(true, std::sync::atomic::Ordering::SeqCst);
        slots.add_permits(1);
        activity.shed.notify_one();
        true
    }
}

/// A connection's entry in the registry, removed when the connection closes.
pub(super) struct Registration {
    pub(super) id: u64,
    pub(super) ip: IpAddr,
    pub(super) open: Arc<OpenConnections>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.open.remove(self.id, self.ip);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::SeqCst;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn shed(activity: &ConnectionActivity) -> bool {
        activity.shed_marked.load(SeqCst)
    }

    #[test]
    fn sheds_the_oldest_idle_connection_of_the_address_holding_most() {
        let open = OpenConnections::default();
        let slots = Semaphore::new(0);
        let (_, oldest) = open.admit(ip(1), 0).unwrap();
        let flood: Vec<_> = (0..3).map(|_| open.admit(ip(2), 0).unwrap().1).collect();
        assert!(open.shed_oldest(&slots));
        assert!(shed(&flood[0]) && !shed(&flood[1]) && !shed(&oldest));
        assert_eq!(slots.available_permits(), 1, "its slot is handed on");
        assert!(open.shed_oldest(&slots));
        assert!(shed(&flood[1]));
    }

    #[test]
    fn only_connections_computing_an_answer_keep_their_slot() {
        let open = OpenConnections::default();
        let slots = Semaphore::new(0);
        let (_, computing) = open.admit(ip(1), 0).unwrap();
        let _answering = computing.busy();
        let (_, uploading) = open.admit(ip(1), 0).unwrap();
        let _request = uploading.busy();
        let reading = uploading.reading_body();
        assert!(
            open.shed_oldest(&slots),
            "a body still arriving cost nothing yet"
        );
        assert!(shed(&uploading) && !shed(&computing));
        drop(reading);
        assert!(
            !open.shed_oldest(&slots),
            "every other connection is computing"
        );
        assert!(!shed(&computing));
    }

    #[test]
    fn an_address_over_its_share_is_refused_and_newcomers_go_first() {
        let open = OpenConnections::default();
        let held: Vec<_> = (0..2).map(|_| open.admit(ip(1), 2).unwrap()).collect();
        assert!(open.admit(ip(1), 2).is_none());
        let _other = open.admit(ip(3), 2).unwrap();
        assert_eq!(
            open.lightest([ip(1), ip(3), ip(4), ip(5)].into_iter()),
            Some(2)
        );
        assert_eq!(open.lightest([ip(1)].into_iter()), Some(0));
        assert_eq!(open.lightest(std::iter::empty()), None);
        open.remove(held[0].0, ip(1));
        assert_eq!(open.held_by(ip(1)), 1);
        assert!(open.admit(ip(1), 2).is_some());
    }
}
