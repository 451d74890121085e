"""A `wasi:http` proxy written in Python for componentize-py.

It knows nothing of Berth: its bindings come from the standard `wasi:http`
WIT alone, as for any other host (the portability test of
`tests/tests/all/portability.rs` serves it with `berth serve`).
Answers every request with 200 `hello from python at <path>`.
"""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(f"hello from python at {path}".encode())
        OutgoingBody.finish(body, None)
