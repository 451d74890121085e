// {{name}}: consumes `{{name}}.events` and counts what it handled
// (componentize-js).
//
// Deliveries are at least once: the message id keeps a redelivered message
// from being counted twice. Throwing from `handle` makes the host redeliver
// after a backoff, up to the trigger's `max_deliveries`. The same component
// serves `POST /publish` and `GET /` so there is a way in.

import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from 'wasi:http/types@0.2.12';
import { Bucket } from 'berth:infra/kv@0.1.0';
import { log } from 'berth:infra/logging@0.1.0';
import { publish } from 'berth:infra/messaging@0.1.0';

const TOPIC = '{{name}}.events';
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const dispose = Symbol.dispose || Symbol.for('dispose');

export const handler = {
  handle(msg) {
    const state = Bucket.open('state');
    // Only the first delivery of a message id counts.
    const seen = `seen/${msg.id}`;
    if (state.compareAndSwap(seen, undefined, encoder.encode('1'))) {
      let handled;
      try {
        handled = state.increment('handled', 1n);
      } catch (e) {
        // Failed, the mark goes too, so that the redelivery counts it.
        state.delete(seen);
        throw e;
      }
      log('info', 'message handled', [['handled', String(handled)]]);
    }
    return undefined;
  },
};

function readBody(request) {
  const body = request.consume();
  const stream = body.stream();
  const chunks = [];
  for (;;) {
    try {
      chunks.push(stream.blockingRead(65536n));
    } catch (e) {
      break; // closed
    }
  }
  stream[dispose]();
  const data = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    data.set(c, at);
    at += c.length;
  }
  return data;
}

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
    const path = request.pathWithQuery() ?? '/';
    if (path === '/publish') {
      const id = publish(TOPIC, readBody(request), []);
      return respond(responseOut, 202, `published ${id}\n`);
    }
    if (path === '/') {
      const handled = Bucket.open('state').get('handled');
      return respond(responseOut, 200, `handled ${handled ? decoder.decode(handled) : '0'}\n`);
    }
    respond(responseOut, 404, 'not found\n');
  },
};
