//! Email port test guest (`wasi:cli/run` command).
//!
//! Mode (argv[1..]): `send <sender> <recipient>`: sends one valid message,
//! then checks that malformed or unauthorised messages are refused.
//! Any failed assertion panics, which traps: the host sees a test failure.

use berth_bindings::email::{self, Error, Message};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.get(1..).unwrap_or_default() {
        ["send", sender, recipient] => send(sender, recipient),
        other => panic!("usage: email_guest send <sender> <recipient>; got {other:?}"),
    }
}

fn step(name: &str) {
    println!("email: {name} ok");
}

/// The valid welcome message; the refusal cases each break one thing in it.
fn welcome(sender: &str, recipient: &str) -> Message {
    Message {
        from: sender.to_owned(),
        to: vec![recipient.to_owned()],
        cc: Vec::new(),
        bcc: Vec::new(),
        reply_to: None,
        subject: "Welcome".to_owned(),
        text_body: "Hello from Berth".to_owned(),
        html_body: None,
    }
}

/// Sends `msg` and asserts it is refused with `InvalidMessage`.
fn expect_invalid(case: &str, msg: &Message) {
    match email::send(msg) {
        Err(Error::InvalidMessage(_)) => step(&format!("{case} is invalid-message")),
        other => panic!("{case}: expected InvalidMessage, got {other:?}"),
    }
}

fn send(sender: &str, recipient: &str) {
    let id = email::send(&welcome(sender, recipient)).expect("send welcome");
    assert!(!id.is_empty(), "send returned an empty id");
    step(&format!("sent welcome as {id}"));

    // Header injection: CR/LF in a header must never reach the wire.
    let mut msg = welcome(sender, recipient);
    msg.subject = "Welcome\r\nBcc: evil@example.com".to_owned();
    expect_invalid("CRLF in subject", &msg);

    let mut msg = welcome(sender, recipient);
    msg.to.clear();
    expect_invalid("no recipient", &msg);

    let mut msg = welcome(sender, recipient);
    msg.to = vec!["not an address".to_owned()];
    expect_invalid("malformed recipient", &msg);

    match email::send(&welcome("intruder@example.com", recipient)) {
        Err(Error::SenderNotGranted(_)) => step("ungranted sender is sender-not-granted"),
        other => panic!("send from intruder@example.com: expected SenderNotGranted, got {other:?}"),
    }
    println!("email: all checks passed");
}
