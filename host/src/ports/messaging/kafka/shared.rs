//! The broker operations behind publishing and consuming: topics created
//! on first use (and listed, for patterns), a producing client per topic, a
//! reader's own client, fetches that survive retention and broker failures,
//! the committed offsets, and the live pattern subscriptions.

use super::*;

impl Shared {
    pub(super) fn kafka_topic(&self, topic: &str) -> String {
        format!("berth.{}.{topic}", self.app)
    }

    pub(super) fn request_topic(&self, topic: &str) -> String {
        format!("berth.{}.__req.{topic}", self.app)
    }

    pub(super) fn offsets_topic(&self) -> String {
        format!("berth.{}.__offsets", self.app)
    }

    /// Runs a broker call within the timeout.
    pub(super) async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, KafkaError>>,
    ) -> Result<T, MessagingError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| unavailable("timed out"))?
            .map_err(unavailable)
    }

    /// The names of the cluster's topics.
    pub(super) async fn topic_names(&self) -> Result<Vec<String>, MessagingError> {
        let topics = self.call(self.client.list_topics()).await?;
        Ok(topics.into_iter().map(|t| t.name).collect())
    }

    /// Remembers a pattern subscription of this broker for as long as
    /// `alive` lives, so requests to the topics it matches find it.
    pub(super) fn add_pattern(&self, pattern: &str, alive: Weak<()>) {
        let mut patterns = self.patterns.lock().unwrap_or_else(|p| p.into_inner());
        patterns.retain(|(_, alive)| alive.strong_count() > 0);
        patterns.push((pattern.to_string(), alive));
    }

    /// Whether a live pattern subscription of this broker matches `topic`
    /// (forgetting the dropped ones).
    pub(super) fn pattern_answers(&self, topic: &str) -> bool {
        let mut patterns = self.patterns.lock().unwrap_or_else(|p| p.into_inner());
        patterns.retain(|(_, alive)| alive.strong_count() > 0);
        patterns
            .iter()
            .any(|(pattern, _)| pattern::matches(pattern, topic))
    }

    /// Creates `name` with one partition unless it exists.
    pub(super) async fn ensure(&self, name: &str) -> Result<(), MessagingError> {
        let mut created = self.created.lock().await;
        if created.contains(name) {
            return Ok(());
        }
        let controller = self.client.controller_client().map_err(unavailable)?;
        let timeout_ms = self.timeout.as_millis().min(i32::MAX as u128) as i32;
        match tokio::time::timeout(
            self.timeout,
            controller.create_topic(name, 1, self.replication_factor, timeout_ms),
        )
        .await
        {
            Err(_) => return Err(unavailable("create topic timed out")),
            Ok(Ok(())) => {}
            Ok(Err(KafkaError::ServerError {
                protocol_error: ProtocolError::TopicAlreadyExists,
                ..
            })) => {}
            Ok(Err(e)) => return Err(unavailable(e)),
        }
        created.insert(name.to_string());
        Ok(())
    }

    /// The client of `name`'s only partition, creating the topic if need be.
    pub(super) async fn partition(
        &self,
        name: &str,
    ) -> Result<Arc<PartitionClient>, MessagingError> {
        if let Some(p) = self
            .partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(p.clone());
        }
        self.ensure(name).await?;
        let client = Arc::new(
            self.call(
                self.client
                    .partition_client(name, 0, UnknownTopicHandling::Retry),
            )
            .await?,
        );
        self.partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), client.clone());
        Ok(client)
    }

    /// A client of its own for a long-polling reader of `name`.
    pub(super) async fn reader(&self, name: &str) -> Result<Arc<PartitionClient>, MessagingError> {
        self.ensure(name).await?;
        Ok(Arc::new(
            self.call(
                self.client
                    .partition_client(name, 0, UnknownTopicHandling::Retry),
            )
            .await?,
        ))
    }

    pub(super) async fn produce(&self, name: &str, record: Record) -> Result<i64, MessagingError> {
        let partition = self.partition(name).await?;
        let produced = tokio::time::timeout(
            self.timeout,
            partition.produce(vec![record], Compression::NoCompression),
        )
        .await;
        let offsets = match produced {
            Ok(Ok(offsets)) => offsets,
            Ok(Err(KafkaError::ServerError {
                protocol_error: ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge,
                ..
            })) => {
                return Err(MessagingError::TooLarge(
                    "the message is larger than the broker accepts".into(),
                ));
            }
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => {
                // The connection may be half-open: connect afresh next time.
                self.partitions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(name);
                return Err(unavailable("produce timed out"));
            }
        };
        offsets
            .first()
            .copied()
            .ok_or_else(|| unavailable("no offset in the produce response"))
    }

    /// One fetch from `offset`: the records and the offset to fetch next.
    /// An offset the log no longer has moves to `on_out_of_range`; a failed
    /// or timed-out fetch is retried after a pause.
    pub(super) async fn fetch(
        &self,
        partition: &PartitionClient,
        offset: i64,
        on_out_of_range: OffsetAt,
    ) -> (Vec<RecordAndOffset>, i64) {
        let started = Instant::now();
        let fetched = tokio::time::timeout(
            FETCH_WAIT + self.timeout,
            partition.fetch_records(offset, 1..FETCH_BYTES, FETCH_WAIT_MS),
        )
        .await;
        match fetched {
            Ok(Ok((records, _high_watermark))) => {
                // A broker answering at once with nothing (only control
                // records, or one ignoring the wait) must not spin a core.
                if records.is_empty() && started.elapsed() < FETCH_WAIT / 2 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let next = records.last().map_or(offset, |r| r.offset + 1).max(offset);
                (records, next)
            }
            Ok(Err(KafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            })) => match self.call(partition.get_offset(on_out_of_range)).await {
                Ok(to) => {
                    tracing::error!(topic = %partition.topic(), from = offset, to, "kafka offset no longer in the log (retention, or a recreated topic); going on from there");
                    (Vec::new(), to)
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    (Vec::new(), offset)
                }
            },
            Ok(Err(e)) => {
                tracing::warn!(topic = %partition.topic(), error = %e, "kafka fetch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                (Vec::new(), offset)
            }
            Err(_) => {
                tracing::warn!(topic = %partition.topic(), "kafka fetch timed out; retrying");
                (Vec::new(), offset)
            }
        }
    }

    /// Reads `partition` from `offset` on, handing each record to `each`
    /// until it returns `false` or the task is aborted; retries failed
    /// fetches.
    pub(super) async fn read_from(
        self: &Arc<Self>,
        partition: Arc<PartitionClient>,
        mut offset: i64,
        mut each: impl FnMut(&Arc<Self>, RecordAndOffset) -> bool,
    ) {
        loop {
            let (records, next) = self.fetch(&partition, offset, OffsetAt::Latest).await;
            offset = next;
            for record in records {
                if !each(self, record) {
                    return;
                }
            }
        }
    }

    pub(super) fn reply_arrived(&self, record: RecordAndOffset) {
        let (meta, headers) = split_headers(&record.record);
        let Some(correlation) = meta.get(CORRELATION_HEADER) else {
            return;
        };
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(correlation);
        if let Some(tx) = waiting {
            let _ = tx.send(Message {
                id: uuid::Uuid::new_v4().to_string(),
                topic: String::new(),
                payload: record.record.value.unwrap_or_default(),
                headers,
                attempt: 1,
            });
        }
    }

    /// The committed offset of trigger `key`, reading the offsets topic
    /// once per broker.
    pub(super) async fn committed(&self, key: &str) -> Result<Option<i64>, MessagingError> {
        let mut cache = self.committed.lock().await;
        if cache.is_none() {
            *cache = Some(self.read_committed().await?);
        }
        Ok(cache.as_ref().and_then(|c| c.get(key).copied()))
    }

    /// Records that trigger `key` committed `offset`, so a subscription
    /// made again in this process (an app reloaded) resumes from it.
    pub(super) async fn remember_commit(&self, key: &str, offset: i64) {
        if let Some(cache) = self.committed.lock().await.as_mut() {
            cache.insert(key.to_string(), offset);
        }
    }

    /// Every trigger's last committed offset.
    pub(super) async fn read_committed(&self) -> Result<HashMap<String, i64>, MessagingError> {
        let partition = self.reader(&self.offsets_topic()).await?;
        let end = self.call(partition.get_offset(OffsetAt::Latest)).await?;
        let mut offset = self.call(partition.get_offset(OffsetAt::Earliest)).await?;
        let mut committed = HashMap::new();
        while offset < end {
            let (records, _) = self
                .call(partition.fetch_records(offset, 1..FETCH_BYTES, FETCH_WAIT_MS))
                .await?;
            if records.is_empty() {
                break;
            }
            for r in records {
                offset = r.offset + 1;
                let key = r
                    .record
                    .key
                    .map(|k| String::from_utf8_lossy(&k).into_owned());
                let value = r
                    .record
                    .value
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|v| v.parse::<i64>().ok());
                if let (Some(key), Some(value)) = (key, value) {
                    committed.insert(key, value);
                }
            }
        }
        Ok(committed)
    }
}
