// A `wasi:http` proxy written in JavaScript for componentize-js.
//
// It knows nothing of Berth: it is built against the standard `wasi:http`
// WIT alone (the `wit/` directory of wasmtime-wasi-http, world
// `wasi:http/proxy`), as for any other host:
//
//     componentize-js app.js --wit <wasmtime-wasi-http>/wit -n wasi:http/proxy@0.2.12 -o js_http.wasm
//
// It implements `wasi:http/incoming-handler` by hand: exporting
// `incomingHandler` turns off StarlingMonkey's `fetch-event` feature
// (`addEventListener('fetch', …)`), which in componentize-js 0.23 only
// binds the export at the engine's own wasi:http version, 0.2.10, and fails
// against the 0.2.12 WIT ("failed to find export of interface
// `wasi:http/incoming-handler@0.2.12` function `handle`").
//
// Answers every request with 200 `hello from js at <path>`.

import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from 'wasi:http/types@0.2.12';

const encoder = new TextEncoder();
// Resources are dropped with their dispose method; a body's stream must be
// dropped before the body is finished.
const dispose = Symbol.dispose || Symbol.for('dispose');

export const incomingHandler = {
  handle(request, responseOut) {
    const path = request.pathWithQuery() ?? '/';
    const response = new OutgoingResponse(
      Fields.fromList([['content-type', encoder.encode('text/plain')]]),
    );
    const body = response.body();
    ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
    const stream = body.write();
    stream.blockingWriteAndFlush(encoder.encode(`hello from js at ${path}`));
    stream[dispose]();
    OutgoingBody.finish(body, undefined);
  },
};
