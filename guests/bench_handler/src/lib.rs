//! Benchmark message handler (world `berth:infra/message-handler`): accepts
//! every message and does nothing else, so a benchmark of it measures
//! Berth's consume → instantiate → handle → ack path and nothing more.

wit_bindgen::generate!({
    path: "../../wit",
    world: "berth:infra/message-handler",
    generate_all,
});

use berth::infra::messaging_types::Message;

struct Handler;

export!(Handler);

impl exports::berth::infra::handler::Guest for Handler {
    fn handle(msg: Message) -> Result<Option<Vec<u8>>, String> {
        std::hint::black_box(&msg.payload);
        Ok(None)
    }
}
