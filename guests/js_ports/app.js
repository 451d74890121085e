// A Berth command written in JavaScript for componentize-js.
//
// It uses the ports (SQL, key-value, blob, config) through the bindings
// componentize-js generates from the Berth WIT, and outbound HTTP through
// `fetch`, which StarlingMonkey implements on the standard
// `wasi:http/outgoing-handler`. It is built from one WIT directory holding
// the Berth WIT, the WASI packages (as `deps/`) and `world.wit`:
//
//     componentize-js app.js --wit <that dir> -n berth:infra/js-command -o js_ports.wasm
//
// Run as `js_ports <host:port>`: prints one line per port, like
// guests/python_ports.
//
// How componentize-js maps the WIT (the jco conventions):
// - interfaces are modules named by their qualified name
//   (`berth:infra/sql@0.1.0`), functions camelCased;
// - resources are classes, static functions static methods;
// - `result<T, E>` returns T or throws a `ComponentError` whose `payload`
//   is E; a variant is `{ tag: 'kebab-name', val }`;
// - `list<u8>` is a Uint8Array, `u64`/`s64` a BigInt, `option<T>` T or
//   undefined;
// - the export `wasi:cli/run` is an object `run` with a `run` function,
//   which may be async (its promise is driven to completion);
// - the module's top level runs at build time (Wizer snapshot), where no
//   import may be called: call ports inside the exported functions only.

import { getArguments } from 'wasi:cli/environment@0.2.12';
import { Connection } from 'berth:infra/sql@0.1.0';
import { Bucket } from 'berth:infra/kv@0.1.0';
import { Container } from 'berth:infra/blob@0.1.0';
import { get as configGet } from 'berth:infra/config@0.1.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// console.log writes to the command's stdout (wasi:cli/stdout),
// console.error to its stderr.
function print(...parts) {
  console.log(parts.join(' '));
}

// The variant name of a port error thrown for an `err` result.
function errorName(e) {
  return e && e.payload && typeof e.payload.tag === 'string' ? e.payload.tag : String(e);
}

export const run = {
  async run() {
    const upstream = getArguments()[1];

    const db = Connection.open('main');
    db.execute('CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)', []);
    db.execute('INSERT INTO users (name) VALUES (?)', [{ tag: 'text', val: 'ada' }]);
    const rows = db.query('SELECT id, name FROM users ORDER BY id', []);
    print('sql', rows.rows.map((r) => `${r[0].val}:${r[1].val}`).join(','));

    const bucket = Bucket.open('cache');
    bucket.set('greeting', encoder.encode('hi'), undefined);
    print('kv', decoder.decode(bucket.get('greeting')), bucket.increment('visits', 2n));

    const files = Container.open('files');
    files.put('note.txt', encoder.encode('hello blob'));
    print('blob', decoder.decode(files.get('note.txt')), files.stat('note.txt').size);

    print('config', configGet('greeting'));
    try {
      configGet('secret');
      print('config-secret readable');
    } catch (e) {
      print('config-secret', errorName(e));
    }

    try {
      const response = await fetch(`http://${upstream}/ping`);
      print('http', response.status, await response.text());
    } catch (e) {
      print('http error', e);
    }
  },
};
