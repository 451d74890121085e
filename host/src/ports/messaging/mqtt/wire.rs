//! How Berth names things in MQTT: the settings' URL, topics and shared
//! subscriptions, and the user properties carrying ids, headers and attempts.

use super::*;

/// Where to connect and as whom, from the settings' URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    /// A name or an address, IPv6 in brackets.
    pub(super) host: String,
    pub(super) port: u16,
    /// The user and the password. The password is a [`Secret`], so `Debug`
    /// never shows it.
    pub(super) credentials: Option<(String, Secret)>,
}

/// Parses `mqtt://[user[:password]@]host[:port][/]`. Errors never repeat
/// the URL, because it may hold a password.
pub(super) fn parse_url(url: &str) -> Result<Target, MessagingError> {
    let bad = || {
        MessagingError::InvalidInput(
            "the MQTT URL must be mqtt://[user[:password]@]host[:port]".into(),
        )
    };
    let rest = url.strip_prefix("mqtt://").ok_or_else(bad)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, authority) = match rest.rsplit_once('@') {
        Some((userinfo, authority)) => (Some(userinfo), authority),
        None => (None, rest),
    };
    if authority.contains(['/', '?', '#']) {
        return Err(bad());
    }
    let (host, port) = match authority.strip_prefix('[') {
        // IPv6 keeps its brackets: rumqttc resolves `host:port`.
        Some(v6) => {
            let (address, after) = v6.split_once(']').ok_or_else(bad)?;
            if address.is_empty() {
                return Err(bad());
            }
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':').ok_or_else(bad)?),
            };
            (format!("[{address}]"), port)
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        },
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(bad)?,
    };
    let credentials = match userinfo {
        None | Some("") => None,
        Some(userinfo) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let user = crate::ports::percent_decode(user).ok_or_else(bad)?;
            if user.is_empty() {
                return Err(bad());
            }
            let password = crate::ports::percent_decode(password).ok_or_else(bad)?;
            Some((user, Secret::new(password)))
        }
    };
    Ok(Target {
        host,
        port,
        credentials,
    })
}

/// Whether `s` can be one MQTT topic level or a share name.
pub(super) fn mqtt_safe(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '\0'])
}

/// Checks that each segment of `topic` (a topic or a pattern) can be one
/// MQTT level, so that nothing names an MQTT topic outside its subtree.
pub(super) fn check_topic(topic: &str) -> Result<(), MessagingError> {
    if topic.split('.').all(mqtt_safe) {
        Ok(())
    } else {
        Err(MessagingError::InvalidInput(format!(
            "topic {topic:?} cannot be MQTT topic levels"
        )))
    }
}

/// `berth/<app>/msg/`: the subtree of the app's messages.
pub(super) fn message_prefix(app: &str) -> String {
    format!("berth/{app}/msg/")
}

/// `berth/<app>/req/`: the subtree of the app's requests.
pub(super) fn request_prefix(app: &str) -> String {
    format!("berth/{app}/req/")
}

/// `berth/<app>/retry/<consumer>/<trigger>/`: the subtree where the
/// failed messages of trigger `consumer` on `trigger` (its topic or
/// pattern, as one level) are republished, so that only it receives them
/// again, not even another trigger of the same component.
pub(super) fn retry_prefix(app: &str, consumer: &str, trigger: &str) -> String {
    format!("berth/{app}/retry/{consumer}/{trigger}/")
}

/// The MQTT topic of Berth topic `topic` under `prefix`: one level per
/// segment, which MQTT wildcards can match. It is injective, because
/// segments are never empty and never hold `/`.
pub(super) fn topic_under(prefix: &str, topic: &str) -> String {
    format!("{prefix}{}", topic.replace('.', "/"))
}

/// The MQTT filter of `topic`, a topic or a pattern, under `prefix`: `*`
/// becomes `+`, and `>` becomes `+/#`, since MQTT's `#` alone also matches
/// its parent level and `>` stands for at least one segment.
pub(super) fn filter_under(prefix: &str, topic: &str) -> String {
    format!("{prefix}{}", pattern::translate(topic, "/", "+", "+/#"))
}

/// The Berth topic of the MQTT topic `mqtt_topic` if it lies under
/// `prefix` (the inverse of [`topic_under`]).
pub(super) fn topic_from(prefix: &str, mqtt_topic: &str) -> Option<String> {
    let levels = mqtt_topic.strip_prefix(prefix)?;
    Some(levels.replace('/', "."))
}

/// `berth/<app>/msg/<levels>`: where the messages of `topic` go.
pub(super) fn message_topic(app: &str, topic: &str) -> String {
    topic_under(&message_prefix(app), topic)
}

/// `berth/<app>/req/<levels>`: where requests to `topic` go.
pub(super) fn request_topic(app: &str, topic: &str) -> String {
    topic_under(&request_prefix(app), topic)
}

/// `berth/<app>/reply/<client id>`: where one host's replies come back.
pub(super) fn reply_topic(app: &str, client_id: &str) -> String {
    format!("berth/{app}/reply/{client_id}")
}

/// A short name of trigger `consumer` on `topic` for its client id: the
/// first 8 bytes of a hash of both, in hex.
pub(super) fn trigger_key(consumer: &str, topic: &str) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    hash.update(consumer.as_bytes());
    hash.update([0]);
    hash.update(topic.as_bytes());
    hex::encode(&hash.finalize()[..8])
}

/// `$share/<group>/<filter>`: a subscription whose messages the broker
/// deals out among the members of `group`.
fn shared(group: &str, filter: &str) -> String {
    format!("$share/{group}/{filter}")
}

/// The share group of trigger `consumer`'s stored messages.
fn share_group(app: &str, consumer: &str) -> String {
    format!("berth-{app}-{consumer}")
}

/// The shared subscription through which the hosts of an app divide the
/// messages of `topic` (a topic or a pattern) for trigger `consumer`.
pub(super) fn shared_filter(app: &str, consumer: &str, topic: &str) -> String {
    let filter = filter_under(&message_prefix(app), topic);
    shared(&share_group(app, consumer), &filter)
}

/// The shared subscription, in the same group as [`shared_filter`], through
/// which trigger `consumer`'s failed messages of `topic` come back.
pub(super) fn shared_retry_filter(app: &str, consumer: &str, topic: &str) -> String {
    let filter = filter_under(&retry_prefix(app, consumer, topic), topic);
    shared(&share_group(app, consumer), &filter)
}

/// The shared subscription through which the hosts of an app divide the
/// requests to `topic` (a topic or a pattern) for trigger `consumer`.
pub(super) fn shared_request_filter(app: &str, consumer: &str, topic: &str) -> String {
    let filter = filter_under(&request_prefix(app), topic);
    shared(&format!("{}-req", share_group(app, consumer)), &filter)
}

/// `berth/<app>/orphans/<trigger key>`: where the broker publishes the
/// will of trigger `consumer`'s clients on `topic`, naming a client that
/// went away without a word.
pub(super) fn orphan_topic(app: &str, consumer: &str, topic: &str) -> String {
    format!("berth/{app}/orphans/{}", trigger_key(consumer, topic))
}

/// The shared subscription through which one live host of trigger
/// `consumer` on `topic` hears of its clients that went away.
pub(super) fn shared_orphan_filter(app: &str, consumer: &str, topic: &str) -> String {
    let group = format!("{}-orphans", share_group(app, consumer));
    shared(&group, &orphan_topic(app, consumer, topic))
}

/// A request's message expiry for caller timeout `timeout`: whole
/// seconds, rounded up, at least 1 (0 would not expire).
pub(super) fn expiry_secs(timeout: Duration) -> u32 {
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    secs.clamp(1, u64::from(u32::MAX)) as u32
}

/// The user properties carrying `id`, `headers` and, past the first, the
/// attempt. Headers named like Berth's own properties are left out, because
/// the host's values win.
pub(super) fn publish_properties(
    id: &str,
    headers: &[(String, String)],
    attempt: u32,
) -> PublishProperties {
    let mut user_properties: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| name != ID_PROPERTY && name != ATTEMPT_PROPERTY)
        .cloned()
        .collect();
    user_properties.push((ID_PROPERTY.to_string(), id.to_string()));
    if attempt > 1 {
        user_properties.push((ATTEMPT_PROPERTY.to_string(), attempt.to_string()));
    }
    PublishProperties {
        user_properties,
        ..Default::default()
    }
}

/// The Berth id, the headers (sorted, without Berth's own properties) and
/// the attempt recorded in a message's user properties.
pub(super) fn metadata(
    properties: Option<&PublishProperties>,
) -> (Option<String>, Vec<(String, String)>, u32) {
    let mut id = None;
    let mut attempt = 1;
    let mut headers = Vec::new();
    let user_properties = properties.map(|p| p.user_properties.as_slice());
    for (name, value) in user_properties.unwrap_or_default() {
        match name.as_str() {
            ID_PROPERTY => id = Some(value.clone()),
            ATTEMPT_PROPERTY => attempt = value.parse::<u32>().map_or(1, |n| n.max(1)),
            // A request's timeout: the host's, read by the trigger.
            TIMEOUT_PROPERTY => {}
            _ => headers.push((name.clone(), value.clone())),
        }
    }
    headers.sort();
    (id, headers, attempt)
}

/// What a client is for.
#[derive(Clone)]
pub(super) enum Role {
    /// Publishes and receives replies. It has a clean session, because
    /// nothing it receives needs to outlive a connection.
    Publisher,
    /// Consumes one trigger's messages and requests (or finishes the
    /// session of such a client that went away, under its id). It has a
    /// persistent session, kept `session_expiry_secs` after a disconnect,
    /// manual acks, and a will: should it go away without a word, the
    /// broker publishes its client id to `orphans` (see
    /// [`super::takeover`]).
    Trigger {
        session_expiry_secs: u32,
        orphans: String,
    },
    /// Hears of a trigger's clients that went away. Its session is clean
    /// and ends with its connection, so the broker never deals an
    /// announcement to a host that is gone.
    Watcher,
    /// Connects once under a client id to discard the session the broker
    /// keeps for it.
    Forget,
}

/// The options of one client. Never `Debug`-print them: rumqttc's `Debug`
/// shows the password.
pub(super) fn mqtt_options(
    target: &Target,
    client_id: &str,
    timeout: Duration,
    role: Role,
) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, target.host.as_str(), target.port);
    options.set_keep_alive(KEEP_ALIVE);
    // Whole seconds in rumqttc, where 0 would time out at once.
    options.set_connection_timeout(timeout.as_secs().max(1));
    if let Some((user, password)) = &target.credentials {
        options.set_credentials(user.as_str(), password.expose());
    }
    let mut properties = ConnectProperties::new();
    properties.max_packet_size = Some(MAX_PACKET_SIZE);
    match role {
        Role::Publisher => {
            options.set_clean_start(true);
            options.set_outgoing_inflight_upper_limit(PUBLISHER_INFLIGHT);
        }
        Role::Trigger {
            session_expiry_secs,
            orphans,
        } => {
            options.set_clean_start(false);
            options.set_manual_acks(true);
            options.set_outgoing_inflight_upper_limit(TRIGGER_INFLIGHT);
            properties.session_expiry_interval = Some(session_expiry_secs);
            properties.receive_maximum = Some(RECEIVE_MAXIMUM);
            // Within the session's life, so that the session is still there
            // to take over when the will comes.
            let delay = (WILL_DELAY.as_secs() as u32).min(session_expiry_secs / 2);
            let will = LastWillProperties {
                delay_interval: Some(delay),
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: Vec::new(),
            };
            options.set_last_will(LastWill::new(
                orphans,
                client_id.as_bytes().to_vec(),
                QoS::AtLeastOnce,
                false,
                Some(will),
            ));
        }
        Role::Watcher | Role::Forget => {
            options.set_clean_start(true);
            options.set_outgoing_inflight_upper_limit(TRIGGER_INFLIGHT);
        }
    }
    options.set_connect_properties(properties);
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_keys_tell_triggers_apart() {
        let a = trigger_key("handler", "orders.*");
        assert_eq!(a.len(), 16);
        assert_eq!(a, trigger_key("handler", "orders.*"));
        assert_ne!(a, trigger_key("handler", "orders.>"));
        assert_ne!(trigger_key("ab", "c"), trigger_key("a", "bc"));
    }

    #[test]
    fn patterns_map_to_filters_by_level() {
        assert_eq!(
            shared_filter("shop", "handler", "orders.*.late"),
            "$share/berth-shop-handler/berth/shop/msg/orders/+/late"
        );
        assert_eq!(
            shared_retry_filter("shop", "handler", "orders.>"),
            "$share/berth-shop-handler/berth/shop/retry/handler/orders.>/orders/+/#"
        );
        assert_eq!(
            shared_request_filter("shop", "handler", "orders.>"),
            "$share/berth-shop-handler-req/berth/shop/req/orders/+/#"
        );
    }

    #[test]
    fn received_topics_map_back() {
        let prefix = message_prefix("shop");
        let mqtt = message_topic("shop", "orders.eu.late");
        assert_eq!(
            topic_from(&prefix, &mqtt).as_deref(),
            Some("orders.eu.late")
        );
        assert_eq!(topic_from(&prefix, "berth/shop/req/orders/eu"), None);
        assert_eq!(topic_from(&prefix, "berth/other/msg/orders"), None);
        let retries = retry_prefix("shop", "handler", "orders.*");
        let mqtt = topic_under(&retries, "orders.eu");
        assert_eq!(topic_from(&retries, &mqtt).as_deref(), Some("orders.eu"));
    }

    #[test]
    fn urls_with_and_without_credentials() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1883").unwrap(),
            Target {
                host: "127.0.0.1".into(),
                port: 1883,
                credentials: None,
            }
        );
        assert_eq!(parse_url("mqtt://broker").unwrap().port, DEFAULT_PORT);
        assert_eq!(parse_url("mqtt://broker/").unwrap().host, "broker");
        let t = parse_url("mqtt://berth:p%40ss:w0rd@broker:1884").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("broker", 1884));
        let (user, password) = t.credentials.unwrap();
        assert_eq!((user.as_str(), password.expose()), ("berth", "p@ss:w0rd"));
        let (user, password) = parse_url("mqtt://only@broker")
            .unwrap()
            .credentials
            .unwrap();
        assert_eq!((user.as_str(), password.expose()), ("only", ""));
        let t = parse_url("mqtt://[::1]:1885").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("[::1]", 1885));
        assert_eq!(parse_url("mqtt://[::1]").unwrap().port, DEFAULT_PORT);
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for bad in [
            "tcp://h:1883",
            "mqtts://u:s3cret@h",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://h:70000",
            "mqtt://h/path",
            "mqtt://h?client_id=x",
            "mqtt://:s3cret@h",
            "mqtt://u:s3cret%zz@h",
            "mqtt://u:s3cret@",
            "mqtt://[::1",
            "mqtt://[::1]x",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(matches!(e, MessagingError::InvalidInput(_)), "{bad}");
            assert!(!e.to_string().contains("s3cret"), "{bad}: {e}");
        }
        let t = parse_url("mqtt://u:s3cret@h").unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn topics_map_into_the_app_subtree() {
        assert_eq!(
            message_topic("shop", "user.created"),
            "berth/shop/msg/user/created"
        );
        assert_eq!(
            request_topic("shop", "user.created"),
            "berth/shop/req/user/created"
        );
        assert_eq!(
            topic_under(
                &retry_prefix("shop", "handler", "user.created"),
                "user.created"
            ),
            "berth/shop/retry/handler/user.created/user/created"
        );
        assert_eq!(reply_topic("shop", "host-1"), "berth/shop/reply/host-1");
        assert_eq!(
            shared_filter("shop", "handler", "user.created"),
            "$share/berth-shop-handler/berth/shop/msg/user/created"
        );
        assert_eq!(
            shared_retry_filter("shop", "handler", "user.created"),
            "$share/berth-shop-handler/berth/shop/retry/handler/user.created/user/created"
        );
        assert_eq!(
            shared_request_filter("shop", "handler", "user.created"),
            "$share/berth-shop-handler-req/berth/shop/req/user/created"
        );
        for ok in [
            "user.created",
            "_schedule.tick",
            "a-b_c",
            "orders.*",
            "orders.>",
        ] {
            assert!(check_topic(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a.+", "#", "a\0", "a..b", ".a", "a."] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn user_properties_round_trip_headers_id_and_attempt() {
        let headers = vec![
            ("trace".to_string(), "t-1".to_string()),
            ("a".into(), "x y".into()),
            ("a".into(), "again".into()),
        ];
        let mut sorted = headers.clone();
        sorted.sort();
        let props = publish_properties("id-1", &headers, 3);
        assert_eq!(
            metadata(Some(&props)),
            (Some("id-1".into()), sorted.clone(), 3)
        );
        let props = publish_properties("id-1", &headers, 1);
        assert!(
            props
                .user_properties
                .iter()
                .all(|(k, _)| k != ATTEMPT_PROPERTY)
        );
        assert_eq!(metadata(Some(&props)), (Some("id-1".into()), sorted, 1));
        // The host's id and attempt win over headers named like them.
        let spoofed = vec![
            (ID_PROPERTY.to_string(), "fake".to_string()),
            (ATTEMPT_PROPERTY.to_string(), "9".to_string()),
        ];
        let props = publish_properties("id-2", &spoofed, 1);
        assert_eq!(metadata(Some(&props)), (Some("id-2".into()), vec![], 1));
    }

    #[test]
    fn metadata_defaults() {
        assert_eq!(metadata(None), (None, vec![], 1));
        for (value, attempt) in [("0", 1), ("x", 1), ("2", 2)] {
            let props = PublishProperties {
                user_properties: vec![(ATTEMPT_PROPERTY.into(), value.into())],
                ..Default::default()
            };
            assert_eq!(metadata(Some(&props)).2, attempt, "{value}");
        }
    }
}
