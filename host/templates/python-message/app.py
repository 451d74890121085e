"""{{name}}: consumes `{{name}}.events` and counts what it handled.

Deliveries are at least once: the message id keeps a redelivered message
from being counted twice. Raising `Err("why")` from `handle` makes the host
redeliver after a backoff, up to the trigger's `max_deliveries`. The same
component serves `POST /publish` and `GET /` so there is a way in.
"""

from typing import Optional

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports import kv, logging, messaging
from wit_world.imports.messaging_types import Message
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

TOPIC = "{{name}}.events"


class Handler(exports.Handler):
    def handle(self, msg: Message) -> Optional[bytes]:
        state = kv.Bucket.open("state")
        # Only the first delivery of a message id counts.
        seen = f"seen/{msg.id}"
        if state.compare_and_swap(seen, None, b"1"):
            try:
                handled = state.increment("handled", 1)
            except Exception:
                # Failed, the mark goes too, so that the redelivery counts it.
                state.delete(seen)
                raise
            logging.log(logging.Level.INFO, "message handled", [("handled", str(handled))])
        return None


def read_body(request: IncomingRequest) -> bytes:
    body = request.consume()
    data = b""
    with body.stream() as stream:
        while True:
            try:
                data += stream.blocking_read(65536)
            except Exception:
                break
    return data


def respond(response_out: ResponseOutparam, status: int, text: str) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with body.write() as stream:
        stream.blocking_write_and_flush(text.encode())
    OutgoingBody.finish(body, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        if path == "/publish":
            message_id = messaging.publish(TOPIC, read_body(request), [])
            return respond(response_out, 202, f"published {message_id}\n")
        if path == "/":
            handled = kv.Bucket.open("state").get("handled")
            return respond(response_out, 200, f"handled {(handled or b'0').decode()}\n")
        respond(response_out, 404, "not found\n")
