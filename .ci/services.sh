#!/usr/bin/env bash
# Starts the services the real-adapter test suites use, idempotently:
# the preinstalled Postgres, MariaDB, Redis, NATS, RabbitMQ and Mosquitto if
# they are down, plus an S3-compatible server (moto) and an SMTP sink
# (aiosmtpd) from PyPI in a virtualenv, and a Kafka broker (tansu, from
# crates.io). Prints the BERTH_TEST_* variables.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${BERTH_SERVICES_VENV:-$HOME/.cache/berth-ci/venv-services}"
maildir="${BERTH_TEST_MAILDIR:-$HOME/.cache/berth-ci/maildir}"

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() {  # port [tries of 0.2 s, default 100]
  for _ in $(seq 1 "${2:-100}"); do up "$1" && return 0; sleep 0.2; done
  echo "service on port $1 did not come up" >&2; return 1
}

up 5432 || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
up 3306 || start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
up 6379 || redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
up 4222 || start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
up 5672 || rabbitmq-server -detached
up 1883 || mosquitto -d -c /etc/mosquitto/mosquitto.conf

if [ ! -x "$venv/bin/moto_server" ] || [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "moto[server]" aiosmtpd
fi
up 9000 || (nohup "$venv/bin/moto_server" -H 127.0.0.1 -p 9000 >/tmp/berth-moto.log 2>&1 &)
# A second S3 server that checks credentials (moto's IAM enforcement), for
# the tests that need a refused request (403) rather than an unreachable one.
up 9001 || (INITIAL_NO_AUTH_ACTION_COUNT=0 nohup "$venv/bin/moto_server" -H 127.0.0.1 -p 9001 >/tmp/berth-moto-auth.log 2>&1 &)
# A Kafka-protocol broker: tansu, built from crates.io once into the cache
# (about 15 minutes cold), keeping its topics in memory.
tansu_version=0.6.0
tansu_root="${BERTH_TANSU_ROOT:-$HOME/.cache/berth-ci/tansu-$tansu_version}"
if [ ! -x "$tansu_root/bin/tansu" ]; then
  echo "installing the tansu Kafka broker $tansu_version (once)" >&2
  CARGO_TARGET_DIR="$HOME/.cache/berth-ci/tansu-target" cargo install --quiet --locked tansu \
    --version "$tansu_version" --features dynostore --root "$tansu_root" >&2
fi
up 9092 || (nohup "$tansu_root/bin/tansu" broker --listener-url tcp://127.0.0.1:9092 \
  --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ >/tmp/berth-tansu.log 2>&1 &)
up 2525 || (nohup "$venv/bin/python" -m aiosmtpd -n -l 127.0.0.1:2525 -c aiosmtpd.handlers.Mailbox "$maildir" >/tmp/berth-smtp.log 2>&1 &)

# Every suite needs its server; RabbitMQ can take a while to boot.
for port in 5432 3306 6379 4222 9000 9001 2525 1883 9092; do wait_for "$port"; done
wait_for 5672 600

cat <<VARS
export BERTH_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test
export BERTH_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test
export BERTH_TEST_REDIS_URL=redis://127.0.0.1:6379
export BERTH_TEST_NATS_URL=nats://127.0.0.1:4222
export BERTH_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672
export BERTH_TEST_MQTT_URL=mqtt://127.0.0.1:1883
export BERTH_TEST_KAFKA_URL=kafka://127.0.0.1:9092
export BERTH_TEST_S3_ENDPOINT=http://127.0.0.1:9000
export BERTH_TEST_S3_AUTH_ENDPOINT=http://127.0.0.1:9001
export BERTH_TEST_SMTP=127.0.0.1:2525
export BERTH_TEST_MAILDIR=$maildir
VARS
