// {{name}}: a command in JavaScript (componentize-js). It records each run
// in SQL and prints the greeting and how many times it has run; arguments
// are names to greet. console.log writes to stdout.

import { getArguments } from 'wasi:cli/environment@0.2.12';
import { get as configGet } from 'berth:infra/config@0.1.0';
import { Connection } from 'berth:infra/sql@0.1.0';

export const run = {
  run() {
    const greeting = configGet('greeting');
    const db = Connection.open('main');
    db.execute('CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, who TEXT NOT NULL)', []);
    const who = getArguments().slice(1).join(', ') || 'world';
    db.execute('INSERT INTO runs (who) VALUES (?)', [{ tag: 'text', val: who }]);
    const runs = db.query('SELECT COUNT(*) FROM runs', []).rows[0][0].val;
    console.log(`${greeting}, ${who}! (run ${runs})`);
  },
};
