//! What happens after a user is created: an event for other components and
//! a welcome email for the user.

use berth_bindings::email::{self, Message};
use berth_bindings::logging::Level;
use berth_bindings::{config, log, messaging};

use crate::repository::User;

/// The topic `welcome-worker` listens on.
pub const USER_CREATED: &str = "user.created";

/// The sender address granted to this component in `berth.toml`.
const WELCOME_SENDER: &str = "welcome@berth.example";

/// Announces `user` and welcomes them.
///
/// Best effort: the user is already committed, so a failure here is logged
/// rather than failing the request. (An app that must never miss an event
/// would write it to an outbox table in the same transaction instead.)
pub fn user_created(user: &User) {
    let id = user.id.to_string();
    let event = serde_json::json!({ "id": user.id, "name": user.name, "email": user.email });
    match messaging::publish(USER_CREATED, event.to_string().as_bytes(), &[]) {
        Ok(message_id) => log(
            Level::Info,
            "published user.created",
            &[("user_id", &id), ("message_id", &message_id)],
        ),
        Err(e) => log(
            Level::Error,
            "publishing user.created failed",
            &[("user_id", &id), ("error", &format!("{e:?}"))],
        ),
    }

    match email::send(&welcome_email(user)) {
        Ok(message_id) => log(
            Level::Info,
            "sent welcome email",
            &[("user_id", &id), ("message_id", &message_id)],
        ),
        Err(e) => log(
            Level::Warn,
            "welcome email failed",
            &[("user_id", &id), ("error", &format!("{e:?}"))],
        ),
    }
}

fn welcome_email(user: &User) -> Message {
    // `greeting` comes from the manifest's [config] section.
    let greeting = config::get("greeting")
        .ok()
        .flatten()
        .unwrap_or_else(|| "Welcome".to_owned());
    Message {
        from: WELCOME_SENDER.to_owned(),
        to: vec![user.email.clone()],
        cc: Vec::new(),
        bcc: Vec::new(),
        reply_to: None,
        subject: greeting.clone(),
        text_body: format!(
            "{greeting}, {}!\n\nYour account number is {}.\n",
            user.name, user.id
        ),
        html_body: None,
    }
}
