//! What a trigger has taken from each partition and not settled: the
//! committed offset only moves past settled records. And the `berth-once`
//! ids a partition delivered.

use krafka::consumer::{OffsetAndMetadata, TopicPartition};

use super::*;

/// A partition: its Kafka topic and number.
pub(super) type Tp = (Arc<str>, i32);

/// What a trigger took from one partition and has not settled.
#[derive(Default)]
pub(super) struct PartitionState {
    /// Offsets delivered and not yet settled.
    unsettled: BTreeSet<i64>,
    /// The offset after the last record taken: what to commit when nothing
    /// is unsettled.
    next: i64,
    /// The offset last committed by this host.
    committed: Option<i64>,
    pub(super) once: OnceIds,
}

impl PartitionState {
    /// The offset to commit: every record before it is settled.
    fn low_water(&self) -> i64 {
        self.unsettled.first().copied().unwrap_or(self.next)
    }
}

/// The last [`ONCE_WINDOW`] `berth-once` ids of a partition, oldest first:
/// those this host delivered, after those it read back from before the
/// first record it was given (see the group reader's `seen`).
#[derive(Default)]
pub(super) struct OnceIds {
    /// Whether the records before the first one given were read back.
    pub(super) seeded: bool,
    ids: VecDeque<String>,
}

impl OnceIds {
    pub(super) fn seen(&self, id: &str) -> bool {
        self.ids.iter().any(|seen| seen == id)
    }

    pub(super) fn remember(&mut self, id: &str) {
        if self.ids.len() == ONCE_WINDOW {
            self.ids.pop_front();
        }
        self.ids.push_back(id.to_string());
    }

    /// Adds the ids of the records before the first one given (oldest
    /// first), before any delivered since.
    pub(super) fn seed(&mut self, before: Vec<String>) {
        self.seeded = true;
        for id in before.into_iter().rev() {
            if self.ids.len() < ONCE_WINDOW && !self.seen(&id) {
                self.ids.push_front(id);
            }
        }
    }
}

/// Whether partition `key` is one of `tps`.
pub(super) fn is_among(key: &Tp, tps: &[TopicPartition]) -> bool {
    tps.iter()
        .any(|tp| tp.partition == key.1 && tp.topic == *key.0)
}

/// What a trigger holds per assigned partition.
#[derive(Default)]
pub(super) struct Progress {
    partitions: Mutex<HashMap<Tp, PartitionState>>,
    /// Set once the subscription is gone: what it took and did not start
    /// handling never will be, so a handover does not wait for it.
    pub(super) stopping: std::sync::atomic::AtomicBool,
}

impl Progress {
    pub(super) fn with<T>(&self, tp: &Tp, f: impl FnOnce(&mut PartitionState) -> T) -> T {
        let mut partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        f(partitions.entry(tp.clone()).or_default())
    }

    /// A record at `offset` was handed to the handler.
    pub(super) fn take(&self, tp: &Tp, offset: i64) {
        self.with(tp, |p| {
            p.unsettled.insert(offset);
            p.next = p.next.max(offset.saturating_add(1));
        });
    }

    /// A record at `offset` needs nothing more (skipped, or a request).
    pub(super) fn pass(&self, tp: &Tp, offset: i64) {
        self.with(tp, |p| p.next = p.next.max(offset.saturating_add(1)));
    }

    /// The delivery at `offset` was settled. Nothing to do if the partition
    /// went to another host meanwhile.
    pub(super) fn settle(&self, tp: &Tp, offset: i64) {
        let mut partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = partitions.get_mut(tp) {
            p.unsettled.remove(&offset);
        }
    }

    /// Deliveries not yet settled.
    pub(super) fn in_flight(&self) -> usize {
        let partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        partitions.values().map(|p| p.unsettled.len()).sum()
    }

    /// Deliveries of `tps` not yet settled.
    pub(super) fn in_flight_of(&self, tps: &[TopicPartition]) -> usize {
        let partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        partitions
            .iter()
            .filter(|(key, _)| is_among(key, tps))
            .map(|(_, p)| p.unsettled.len())
            .sum()
    }

    /// The offsets that moved since their last commit.
    pub(super) fn commits(&self) -> Vec<(TopicPartition, OffsetAndMetadata)> {
        self.commits_where(|_| true)
    }

    /// The offsets of `tps` that moved since their last commit.
    pub(super) fn commits_of(
        &self,
        tps: &[TopicPartition],
    ) -> Vec<(TopicPartition, OffsetAndMetadata)> {
        self.commits_where(|key| is_among(key, tps))
    }

    fn commits_where(
        &self,
        which: impl Fn(&Tp) -> bool,
    ) -> Vec<(TopicPartition, OffsetAndMetadata)> {
        let partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        partitions
            .iter()
            .filter(|(key, p)| which(key) && p.committed != Some(p.low_water()))
            .map(|((topic, partition), p)| {
                let commit = OffsetAndMetadata::new(p.low_water());
                (TopicPartition::new(topic.to_string(), *partition), commit)
            })
            .collect()
    }

    /// `commits` went through.
    pub(super) fn committed(&self, commits: &[(TopicPartition, OffsetAndMetadata)]) {
        let mut partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        for (tp, commit) in commits {
            let key: Tp = (Arc::from(tp.topic.as_str()), tp.partition);
            if let Some(p) = partitions.get_mut(&key) {
                p.committed = Some(commit.offset);
            }
        }
    }

    /// The partitions went to another host: what is in flight there is
    /// theirs to deliver again from the committed offset.
    pub(super) fn revoke(&self, tps: &[TopicPartition]) {
        let mut partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        for tp in tps {
            partitions.remove(&(Arc::from(tp.topic.as_str()), tp.partition));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_offset_waits_for_the_oldest_unsettled_record() {
        let progress = Progress::default();
        let tp: Tp = (Arc::from("berth.shop.t"), 0);
        for offset in 3..6 {
            progress.take(&tp, offset);
        }
        progress.pass(&tp, 6);
        assert_eq!(progress.in_flight(), 3);
        progress.settle(&tp, 4);
        assert_eq!(progress.commits()[0].1.offset, 3);
        progress.settle(&tp, 3);
        assert_eq!(progress.commits()[0].1.offset, 5);
        progress.settle(&tp, 5);
        let commits = progress.commits();
        assert_eq!(commits[0].1.offset, 7);
        progress.committed(&commits);
        assert!(progress.commits().is_empty(), "nothing moved since");
        progress.revoke(&[TopicPartition::new("berth.shop.t", 0)]);
        progress.settle(&tp, 9);
        assert_eq!(progress.in_flight(), 0);
    }

    #[test]
    fn once_ids_remember_a_window_after_what_was_read_back() {
        let mut once = OnceIds::default();
        once.remember("tick-a-3");
        once.seed(vec![
            "tick-a-1".into(),
            "tick-a-2".into(),
            "tick-a-3".into(),
        ]);
        assert!(once.seeded);
        assert_eq!(once.ids, ["tick-a-1", "tick-a-2", "tick-a-3"]);
        assert!(once.seen("tick-a-1") && !once.seen("tick-a-4"));
        for i in 0..ONCE_WINDOW {
            once.remember(&format!("tick-b-{i}"));
        }
        assert_eq!(once.ids.len(), ONCE_WINDOW);
        assert!(!once.seen("tick-a-3"), "the oldest leave the window");
        assert!(once.seen(&format!("tick-b-{}", ONCE_WINDOW - 1)));
    }
}
