"""{{name}}: a command in Python. It records each run in SQL and prints the
greeting and how many times it has run; arguments are names to greet."""

from wit_world import exports
from wit_world.imports import config, environment, sql


class Run(exports.Run):
    def run(self) -> None:
        greeting = config.get("greeting")
        db = sql.Connection.open("main")
        db.execute("CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, who TEXT NOT NULL)", [])
        who = ", ".join(environment.get_arguments()[1:]) or "world"
        db.execute("INSERT INTO runs (who) VALUES (?)", [sql.Value_Text(who)])
        runs = db.query("SELECT COUNT(*) FROM runs", []).rows[0][0].value
        print(f"{greeting}, {who}! (run {runs})")
