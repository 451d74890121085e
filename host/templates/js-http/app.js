// {{name}}: an HTTP component in JavaScript (componentize-js).
//
// `GET /` answers with the configured greeting and a visit counter kept in
// the `counters` bucket; anything else is 404. Imports are the WIT
// interfaces of `wit/` (`berth:infra/kv@0.1.0`, ...). The module's top
// level runs at build time: call ports only inside the exports.

import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from 'wasi:http/types@0.2.12';
import { get as configGet } from 'berth:infra/config@0.1.0';
import { Bucket } from 'berth:infra/kv@0.1.0';

const encoder = new TextEncoder();
const dispose = Symbol.dispose || Symbol.for('dispose');

function respond(responseOut, status, text) {
  const response = new OutgoingResponse(Fields.fromList([['content-type', encoder.encode('text/plain')]]));
  response.setStatusCode(status);
  const body = response.body();
  ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
  const stream = body.write();
  stream.blockingWriteAndFlush(encoder.encode(text));
  stream[dispose]();
  OutgoingBody.finish(body, undefined);
}

export const incomingHandler = {
  handle(request, responseOut) {
    if ((request.pathWithQuery() ?? '/') !== '/') {
      return respond(responseOut, 404, 'not found\n');
    }
    const greeting = configGet('greeting');
    const visits = Bucket.open('counters').increment('visits', 1n);
    respond(responseOut, 200, `${greeting} (visit ${visits})\n`);
  },
};
