//! How Berth names things in MQTT: the settings' URL, topics and shared
//! subscriptions, and the user properties carrying ids, headers and attempts.

use super::*;

/// Where to connect and as whom, from the settings' URL.
#[derive(Debug, PartialEq, Eq)]
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
            let user = percent_decode(user).ok_or_else(bad)?;
            if user.is_empty() {
                return Err(bad());
            }
            let password = percent_decode(password).ok_or_else(bad)?;
            Some((user, Secret::new(password)))
        }
    };
    Ok(Target {
        host,
        port,
        credentials,
    })
}

/// Decodes `%XX` escapes. Returns `None` for a broken escape or for a
/// result that is not UTF-8.
pub(super) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `s` can be one MQTT topic level or a share name.
pub(super) fn mqtt_safe(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '\0'])
}

pub(super) fn check_topic(topic: &str) -> Result<(), MessagingError> {
    if mqtt_safe(topic) {
        Ok(())
    } else {
        Err(MessagingError::InvalidInput(format!(
            "topic {topic:?} cannot be an MQTT topic level"
        )))
    }
}

/// `berth/<app>/msg/<topic>`: where the messages of `topic` go.
pub(super) fn message_topic(app: &str, topic: &str) -> String {
    format!("berth/{app}/msg/{topic}")
}

/// `berth/<app>/req/<topic>`: where requests to `topic` go.
pub(super) fn request_topic(app: &str, topic: &str) -> String {
    format!("berth/{app}/req/{topic}")
}

/// `berth/<app>/reply/<client id>`: where one host's replies come back.
pub(super) fn reply_topic(app: &str, client_id: &str) -> String {
    format!("berth/{app}/reply/{client_id}")
}

/// The shared subscription through which the hosts of an app divide the
/// messages of `topic` for trigger `consumer`.
pub(super) fn shared_filter(app: &str, consumer: &str, topic: &str) -> String {
    format!(
        "$share/berth-{app}-{consumer}/{}",
        message_topic(app, topic)
    )
}

/// The shared subscription through which the hosts of an app divide the
/// requests to `topic` for trigger `consumer`.
pub(super) fn shared_request_filter(app: &str, consumer: &str, topic: &str) -> String {
    format!(
        "$share/berth-{app}-{consumer}-req/{}",
        request_topic(app, topic)
    )
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
            _ => headers.push((name.clone(), value.clone())),
        }
    }
    headers.sort();
    (id, headers, attempt)
}

/// What a client is for.
#[derive(Clone, Copy)]
pub(super) enum Role {
    /// Publishes and receives replies. It has a clean session, because
    /// nothing it receives needs to outlive a connection.
    Publisher,
    /// Consumes one trigger's messages and requests. It has a persistent
    /// session and manual acks.
    Trigger,
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
        Role::Trigger => {
            options.set_clean_start(false);
            options.set_manual_acks(true);
            options.set_outgoing_inflight_upper_limit(TRIGGER_INFLIGHT);
            properties.session_expiry_interval = Some(SESSION_EXPIRY_SECS);
            properties.receive_maximum = Some(RECEIVE_MAXIMUM);
        }
    }
    options.set_connect_properties(properties);
    options
}
