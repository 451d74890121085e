"""A Berth command written in Python for componentize-py.

It uses the ports (SQL, key-value, blob, config) through bindings generated
from the Berth WIT (`berth wit`), and outbound HTTP through the standard
`wasi:http`. tests/build.rs builds it from one WIT directory holding the
Berth WIT, the WASI packages and `world.wit`:

    componentize-py -d <that dir> -w berth:infra/python-command componentize app -o app.wasm

Run as `python_ports <host:port>`: prints one line per port for the test of
`tests/tests/all/portability.rs`.
"""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import blob, config, environment, kv, outgoing_handler, sql
from wit_world.imports import wasi_http_types as types


def fetch(authority: str, path: str) -> str:
    """`GET http://<authority><path>`: "<status> <body>"."""
    request = types.OutgoingRequest(types.Fields())
    request.set_scheme(types.Scheme_Http())
    request.set_authority(authority)
    request.set_path_with_query(path)
    future = outgoing_handler.handle(request, None)
    with future.subscribe() as ready:
        ready.block()
    outcome = future.get()
    response = outcome.value.value if isinstance(outcome.value, Ok) else None
    if response is None:
        return f"error {outcome}"
    body = response.consume()
    data = b""
    with body.stream() as stream:
        while True:
            try:
                data += stream.blocking_read(65536)
            except Err:
                break
    return f"{response.status()} {data.decode()}"


class Run(exports.Run):
    def run(self) -> None:
        upstream = environment.get_arguments()[1]

        db = sql.Connection.open("main")
        db.execute("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)", [])
        db.execute("INSERT INTO users (name) VALUES (?)", [sql.Value_Text("ada")])
        rows = db.query("SELECT id, name FROM users ORDER BY id", [])
        print("sql", ",".join(f"{r[0].value}:{r[1].value}" for r in rows.rows))

        bucket = kv.Bucket.open("cache")
        bucket.set("greeting", b"hi", None)
        print("kv", bucket.get("greeting").decode(), bucket.increment("visits", 2))

        files = blob.Container.open("files")
        files.put("note.txt", b"hello blob")
        print("blob", files.get("note.txt").decode(), files.stat("note.txt").size)

        print("config", config.get("greeting"))
        try:
            config.get("secret")
            print("config-secret readable")
        except Err as e:
            print("config-secret", type(e.value).__name__)

        print("http", fetch(upstream, "/ping"))
