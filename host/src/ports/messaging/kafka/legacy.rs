//! Upgrading from the release before, which had no consumer groups: it
//! kept each trigger's offset of a topic (its only partition, 0) as
//! records of `berth.<app>.__offsets`, keyed by
//! [`TriggerId::legacy_key`]. A trigger's group that has committed nothing
//! for partition 0 of such a topic starts there, so an upgrade neither
//! replays a topic from its start nor skips what was not handled.

use krafka::admin::{AlterConsumerGroupOffsetsOptions, ListConsumerGroupOffsetsOptions};
use krafka::consumer::{AutoOffsetReset, TopicPartition};

use super::*;

/// The largest part of the old offsets topic read, in records: it holds
/// one record per commit (every 200 ms while a trigger moved), compacted
/// or deleted by retention.
const MAX_RECORDS: usize = 1_000_000;

/// The offsets the release before committed for `trigger` in the Berth
/// `topics` that its group has no commit for yet, as the group's first
/// commits (partition 0 of each).
pub(super) async fn adoptable(
    shared: &Shared,
    trigger: &TriggerId,
    topics: &[String],
) -> Vec<(TopicPartition, i64)> {
    if topics.is_empty() {
        return Vec::new();
    }
    let old = match shared.legacy.get_or_try_init(|| read(shared)).await {
        Ok(old) => old,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the offsets of the release before; triggers without a commit start at the earliest record");
            return Vec::new();
        }
    };
    let wanted: Vec<(TopicPartition, i64)> = topics
        .iter()
        .filter_map(|t| {
            let offset = *old.get(&trigger.legacy_key(t))?;
            Some((TopicPartition::new(shared.kafka_topic(t), 0), offset))
        })
        .collect();
    if wanted.is_empty() {
        return wanted;
    }
    let options = ListConsumerGroupOffsetsOptions::default()
        .timeout(shared.timeout)
        .partitions(wanted.iter().map(|(tp, _)| tp.clone()).collect());
    let committed = match shared
        .call(
            shared
                .admin
                .list_consumer_group_offsets(trigger.group.as_str(), options),
        )
        .await
    {
        Ok(committed) => committed,
        Err(e) => {
            tracing::warn!(group = %trigger.group, error = %e, "cannot read a kafka group's offsets; not adopting the release before's");
            return Vec::new();
        }
    };
    wanted
        .into_iter()
        .filter(|(tp, _)| !matches!(committed.get(tp), Some(Ok(o)) if o.offset.is_some()))
        .collect()
}

/// Commits the release before's offsets of `topics` for `trigger`, whose
/// group has no member yet (see [`adoptable`]). A group that already has
/// members (another host) committed, or is about to, itself.
pub(super) async fn adopt(shared: &Shared, trigger: &TriggerId, topics: &[String]) {
    let offsets = adoptable(shared, trigger, topics).await;
    if offsets.is_empty() {
        return;
    }
    let options = AlterConsumerGroupOffsetsOptions::default().timeout(shared.timeout);
    let altered = shared
        .call(shared.admin.alter_consumer_group_offsets(
            trigger.group.as_str(),
            offsets.clone(),
            options,
        ))
        .await;
    match altered {
        Ok(results) if results.values().all(Result::is_ok) => {
            tracing::info!(group = %trigger.group, ?offsets, "kafka trigger resumes from the offsets of the release before");
        }
        Ok(results) => {
            tracing::debug!(group = %trigger.group, ?results, "some old offsets were not adopted");
        }
        Err(e) => tracing::debug!(group = %trigger.group, error = %e, "old offsets not adopted"),
    }
}

/// Reads every trigger's last offset from `berth.<app>.__offsets`, if
/// there is one.
async fn read(shared: &Shared) -> Result<HashMap<String, i64>, MessagingError> {
    let name = format!("berth.{}.__offsets", shared.app);
    let mut offsets = HashMap::new();
    if !shared.exists(&name).await? {
        return Ok(offsets);
    }
    let consumer = shared
        .call(
            shared
                .kafka
                .consumer_without_group()
                .auto_offset_reset(AutoOffsetReset::Earliest)
                .build(),
        )
        .await?;
    let (_, end) = shared.call(consumer.fetch_watermarks(&name, 0)).await?;
    shared.call(consumer.assign(&name, vec![0])).await?;
    let mut read = 0;
    let mut position = 0;
    while position < end && read < MAX_RECORDS {
        let records = shared.call(consumer.poll(POLL_WAIT)).await?;
        if records.is_empty() {
            break;
        }
        for r in records {
            read += 1;
            position = r.offset.saturating_add(1);
            let key = r
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k).into_owned());
            let value = r
                .value
                .as_ref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<i64>().ok());
            if let (Some(key), Some(value)) = (key, value) {
                offsets.insert(key, value);
            }
        }
    }
    let _ = consumer.close().await;
    Ok(offsets)
}
