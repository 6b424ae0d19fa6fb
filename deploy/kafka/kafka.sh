#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft, broker+controller in one JVM) from Maven Central jars,
# bound to 127.0.0.1, for development and tests on machines without Docker.
#
#   kafka.sh up     start (idempotent); prints the bootstrap address once metadata answers
#   kafka.sh down   SIGTERM, wait for exit, remove the data
#   kafka.sh jars   only resolve the jars (make test does this up front)
#
# KAFKA_PORT (default 9092) picks the broker port; state lives in .kafka/<port>/ (ignored).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
port="${KAFKA_PORT:-9092}"
state="${KAFKA_STATE_DIR:-$root/.kafka/$port}"
pidfile="$state/kafka.pid"
python="${PYTHON:-$root/.venv/bin/python}"
libs="$here/target/libs"

alive() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

port_free() {  # true when nothing listens on 127.0.0.1:$1
    python3 - "$1" <<'PYEOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PYEOF
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

jars() {  # resolve the broker's jars once per pom.xml change
    if [ ! -f "$libs/.stamp" ] || [ "$here/pom.xml" -nt "$libs/.stamp" ]; then
        echo "kafka: resolving broker jars with Maven (first time only)" >&2
        rm -rf "$libs"
        mvn -q -f "$here/pom.xml" package >&2
        touch "$libs/.stamp"
    fi
}

up() {
    if alive; then
        "$python" "$here/ready.py" "127.0.0.1:$port" 60 "$(cat "$pidfile")"
        echo "127.0.0.1:$port"
        return 0
    fi
    if ! port_free "$port"; then
        echo "kafka: port $port on 127.0.0.1 is already in use by another process; set KAFKA_PORT to a free port (e.g. KAFKA_PORT=19092 make kafka-up)" >&2
        exit 1
    fi
    jars
    rm -rf "$state"
    mkdir -p "$state/data" "$state/logs"
    cport="$(free_port)"
    sed -e "s#@PORT@#$port#g" -e "s#@CONTROLLER_PORT@#$cport#g" -e "s#@DATA@#$state/data#g" \
        "$here/server.properties.in" > "$state/server.properties"
    local cp="$libs/*"
    local opts="-Xms256m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true"
    opts="$opts -Dlog4j2.configurationFile=$here/log4j2.properties -Dkafka.logs.dir=$state/logs"
    local cid
    cid="$(java -cp "$cp" kafka.tools.StorageTool random-uuid)"
    # shellcheck disable=SC2086
    java $opts -cp "$cp" kafka.tools.StorageTool format -t "$cid" -c "$state/server.properties" >"$state/logs/format.log" 2>&1 \
        || { cat "$state/logs/format.log" >&2; exit 1; }
    # setsid: the broker outlives this script and make's process group
    # shellcheck disable=SC2086
    setsid java $opts -cp "$cp" kafka.Kafka "$state/server.properties" >"$state/logs/stdout.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    if ! "$python" "$here/ready.py" "127.0.0.1:$port" 90 "$(cat "$pidfile")"; then
        echo "kafka: start-up failed; last lines of $state/logs:" >&2
        tail -n 20 "$state/logs/stdout.log" "$state/logs/server.log" >&2 2>/dev/null || true
        down >/dev/null 2>&1 || true
        exit 1
    fi
    echo "127.0.0.1:$port"
}

down() {
    if alive; then
        local pid
        pid="$(cat "$pidfile")"
        kill -TERM "$pid"
        for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "kafka: broker $pid ignored SIGTERM for 60s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "kafka: stopped broker on 127.0.0.1:$port"
    else
        echo "kafka: no broker running on 127.0.0.1:$port"
    fi
    rm -rf "$state"
}

case "${1:-}" in
    jars) jars ;;
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
