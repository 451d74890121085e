//! Which publish a PUBACK settles: rumqttc reports packet ids only as it
//! sends, so the waiters queue up in publishing order.

use super::*;

/// Matches PUBACKs to the publishes waiting for them.
///
/// `AsyncClient::publish` only queues a request. The event loop assigns the
/// packet id when it sends the publish, and reports it as
/// `Outgoing::Publish(pkid)` in sending order. So waiters queue up in the
/// order their publishes went into the client (one task sends them all),
/// the oldest takes the next packet id sent, and the PUBACK with that id
/// settles it.
#[derive(Default)]
pub(super) struct Acks {
    /// In the order of the client's publish requests, not yet given an id.
    pub(super) queued: VecDeque<Waiter>,
    /// By packet id. There are two waiters under one id only in the moment
    /// after rumqttc resolved a packet id collision: it reports the new
    /// publish before the PUBACK of the old one.
    pub(super) inflight: HashMap<u16, VecDeque<Waiter>>,
    /// The ids of the publishes rumqttc sends again after a reconnect.
    /// Their waiters are already filed under these ids.
    pub(super) resent: HashSet<u16>,
}

impl Acks {
    /// A publish request is about to go into the client.
    pub(super) fn enqueue(&mut self, waiter: Waiter) {
        self.queued.push_back(waiter);
    }

    /// The last publish request never reached the client.
    pub(super) fn withdraw_last(&mut self) -> Option<Waiter> {
        self.queued.pop_back()
    }

    /// The oldest publish request the event loop took but dropped unsent.
    pub(super) fn unsent(&mut self) -> Option<Waiter> {
        self.queued.pop_front()
    }

    /// The event loop sent a publish with packet id `pkid`.
    pub(super) fn sent(&mut self, pkid: u16) {
        // 0 is QoS 0, which this adapter never publishes.
        if pkid == 0 || self.resent.remove(&pkid) {
            return;
        }
        match self.queued.pop_front() {
            Some(waiter) => self.inflight.entry(pkid).or_default().push_back(waiter),
            None => tracing::debug!(pkid, "an mqtt publish nobody waits for"),
        }
    }

    /// The broker acknowledged packet id `pkid`.
    pub(super) fn acked(&mut self, pkid: u16) -> Option<Waiter> {
        self.resent.remove(&pkid);
        let waiters = self.inflight.get_mut(&pkid)?;
        let waiter = waiters.pop_front();
        if waiters.is_empty() {
            self.inflight.remove(&pkid);
        }
        waiter
    }

    /// The client connected again and will send `resent` again. rumqttc
    /// reports a refused PUBACK only as a connection error, and drops the
    /// publish without naming its id. So a waiter filed under an id that is
    /// neither acknowledged (those PUBACKs come before the CONNACK) nor
    /// resent belongs to a publish the broker refused. Its waiter is
    /// returned.
    pub(super) fn reconnected(&mut self, resent: HashSet<u16>) -> Vec<Waiter> {
        let refused: Vec<u16> = self
            .inflight
            .keys()
            .copied()
            .filter(|pkid| !resent.contains(pkid))
            .collect();
        self.resent = resent;
        refused
            .into_iter()
            .flat_map(|pkid| self.inflight.remove(&pkid).unwrap_or_default())
            .collect()
    }
}

/// The packet ids of the publishes an event loop will send again, read
/// while the CONNACK event is handed out (before it sends them).
pub(super) fn resent(pending: &VecDeque<Request>) -> HashSet<u16> {
    pending
        .iter()
        .filter_map(|request| match request {
            Request::Publish(p) if p.pkid != 0 => Some(p.pkid),
            _ => None,
        })
        .collect()
}
