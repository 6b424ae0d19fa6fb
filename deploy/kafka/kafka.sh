#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft, broker+controller in one JVM) from Maven Central jars,
# bound to 127.0.0.1, for development and tests on machines without Docker.
#
#   kafka.sh up     start (idempotent); prints the bootstrap address once metadata answers
#   kafka.sh down   SIGTERM, wait for exit, remove the data (every node of a cluster)
#   kafka.sh node-start ID / node-stop ID
#                   one node of a KAFKA_BROKERS=N cluster that `up` made: start it again on its
#                   own data (waits until it answers metadata and the cluster counts N brokers),
#                   or stop it with SIGTERM (a controlled shutdown) and wait, keeping its data
#   kafka.sh jars   only resolve the jars (make test does this up front)
#   kafka.sh tool NAME [ARGS...]
#                   one of Apache Kafka's command-line tools against the broker, from the same
#                   jars: kafka-topics, kafka-consumer-groups, kafka-console-consumer,
#                   kafka-console-producer, kafka-get-offsets (what bin/NAME.sh runs).
#                   --bootstrap-server is KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:KAFKA_PORT;
#                   KAFKA_TOOLS_CONFIG names a Java client properties file for a secured
#                   cluster (passed as --command-config, or the console tools' --consumer.config
#                   / --producer.config).
#
# KAFKA_PORT (default 9092) picks the broker port; state lives in .kafka/<port>/ (ignored).
#
# KAFKA_BROKERS=N (default 1) starts N combined broker+controller nodes instead: a KRaft
# cluster with an N-voter quorum (node ids 1..N), one cluster id formatted into each node's
# own folder .kafka/<port>/node-<id>/, on ports KAFKA_PORT, KAFKA_PORT+1, ... (or the
# comma-separated KAFKA_PORTS). Its internal topics (offsets, transaction state) get
# replication factor min(3, N) and min ISR min(2, N), and so do the brokers' defaults
# (default.replication.factor, min.insync.replicas). `up` prints the bootstrap list
# 127.0.0.1:p1,127.0.0.1:p2,...; `down` stops every node. Plaintext only.
# Heap: KAFKA_HEAP_OPTS, default -Xms256m -Xmx1g for one node, -Xms128m -Xmx512m per node of
# a cluster (three JVMs on a shared machine).
# Failover timing, Kafka's defaults unless set (appended to every node's server.properties):
#   KAFKA_BROKER_SESSION_TIMEOUT_MS (9000): a broker that stops heartbeating (SIGKILL, a hung
#     host) is fenced, and its partitions get new leaders, only after this long; until then
#     writes to the partitions it led wait (and time out at the client's request timeout).
#   KAFKA_BROKER_HEARTBEAT_INTERVAL_MS (2000): how often a broker heartbeats the controller.
#   KAFKA_REPLICA_LAG_TIME_MAX_MS (30000): a follower that has not caught up for this long is
#     dropped from the ISR; an acks=all write to a partition waits for every ISR member, so a
#     dead follower still in the ISR holds acks=all writes up to this long (or until fenced).
# A controlled stop (SIGTERM) moves leadership away at once: none of these waits apply.
#
# KAFKA_SECURITY=sasl_ssl starts the broker with one SASL_SSL listener instead (SCRAM-SHA-512,
# a CA and broker certificate made with keytool for this run, ACLs by StandardAuthorizer) and
# the super user admin (password KAFKA_ADMIN_PASSWORD, else a random one). In the state
# folder: tls/ca.pem (the CA clients trust), admin.password, and admin-client.properties
# (librdkafka settings for admin, e.g. `kcat -F`). Default: plaintext, no ACLs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
port="${KAFKA_PORT:-9092}"
brokers="${KAFKA_BROKERS:-1}"
if ! [[ "$brokers" =~ ^[1-9][0-9]*$ ]]; then
    echo "kafka: KAFKA_BROKERS must be a whole number of nodes, 1 or more (got '$brokers')" >&2; exit 2
fi
if [ -n "${KAFKA_PORTS:-}" ]; then port="${KAFKA_PORTS%%,*}"; fi
state="${KAFKA_STATE_DIR:-$root/.kafka/$port}"
pidfile="$state/kafka.pid"
python="${PYTHON:-$root/.venv/bin/python}"
libs="$here/target/libs"
security="${KAFKA_SECURITY:-plaintext}"
case "$security" in plaintext|sasl_ssl) ;; *) echo "kafka: KAFKA_SECURITY must be plaintext or sasl_ssl (got '$security')" >&2; exit 2 ;; esac
# ready.py reads its client settings from here (admin over SASL_SSL) when the broker is secure
[ -f "$state/admin-client.properties" ] && export KAFKA_CLIENT_PROPERTIES="$state/admin-client.properties"

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

keytool_() {  # keytool starts a JVM per call: a quick-start one
    keytool -J-XX:TieredStopAtLevel=1 -J-XX:+UseSerialGC "$@" >>"$state/logs/keytool.log" 2>&1 \
        || { echo "kafka: keytool $1 failed:" >&2; tail -n 5 "$state/logs/keytool.log" >&2; exit 1; }
}

secure_setup() {  # sasl_ssl: certificates, admin credentials, listener settings; sets format_args
    command -v keytool >/dev/null || { echo "kafka: KAFKA_SECURITY=sasl_ssl needs keytool (a JDK) on PATH" >&2; exit 1; }
    local tls="$state/tls" storepass admin_pw
    mkdir -p "$tls"
    chmod 700 "$state"
    storepass="$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')"
    admin_pw="${KAFKA_ADMIN_PASSWORD:-$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')}"
    if ! [[ "$admin_pw" =~ ^[A-Za-z0-9._-]+$ ]]; then
        echo "kafka: KAFKA_ADMIN_PASSWORD may hold only letters, digits and . _ - (it goes into a JAAS line)" >&2
        exit 1
    fi
    # A CA, and a broker key whose certificate it signs for 127.0.0.1/localhost (2 days).
    keytool_ -genkeypair -alias ca -keyalg EC -groupname secp256r1 -dname CN=kafka-rerank-test-ca \
        -ext bc:c -ext ku:c=keyCertSign,cRLSign -validity 2 -keystore "$tls/ca.p12" -storetype PKCS12 \
        -storepass "$storepass" -keypass "$storepass"
    keytool_ -exportcert -rfc -alias ca -keystore "$tls/ca.p12" -storepass "$storepass" -file "$tls/ca.pem"
    keytool_ -genkeypair -alias broker -keyalg EC -groupname secp256r1 -dname CN=localhost -validity 2 \
        -keystore "$tls/broker.p12" -storetype PKCS12 -storepass "$storepass" -keypass "$storepass"
    keytool_ -certreq -alias broker -keystore "$tls/broker.p12" -storepass "$storepass" -file "$tls/broker.csr"
    keytool_ -gencert -alias ca -keystore "$tls/ca.p12" -storepass "$storepass" -infile "$tls/broker.csr" \
        -outfile "$tls/broker.pem" -rfc -validity 2 -ext SAN=ip:127.0.0.1,dns:localhost -ext EKU=serverAuth,clientAuth
    keytool_ -importcert -alias ca -file "$tls/ca.pem" -keystore "$tls/broker.p12" -storepass "$storepass" -noprompt
    keytool_ -importcert -alias broker -file "$tls/broker.pem" -keystore "$tls/broker.p12" -storepass "$storepass" -noprompt
    # The plaintext listener lines give way to the SASL_SSL ones.
    grep -v -E '^(listeners|advertised\.listeners|inter\.broker\.listener\.name|listener\.security\.protocol\.map)=' \
        "$state/server.properties" > "$state/server.properties.base"
    sed -e "s#@PORT@#$port#g" -e "s#@CONTROLLER_PORT@#$cport#g" -e "s#@TLS@#$tls#g" \
        -e "s#@STOREPASS@#$storepass#g" -e "s#@ADMIN_PASSWORD@#$admin_pw#g" \
        "$here/server-sasl_ssl.properties.in" >> "$state/server.properties.base"
    mv "$state/server.properties.base" "$state/server.properties"
    (umask 077
     printf '%s\n' "$admin_pw" > "$state/admin.password"
     printf '%s\n' "security.protocol=SASL_SSL" "sasl.mechanism=SCRAM-SHA-512" "sasl.username=admin" \
         "sasl.password=$admin_pw" "ssl.ca.location=$tls/ca.pem" > "$state/admin-client.properties")
    echo "sasl_ssl" > "$state/security"
    # KRaft keeps SCRAM credentials in the metadata log: admin's is written at format time.
    format_args=(--add-scram "SCRAM-SHA-512=[name=admin,password=$admin_pw]")
}

single_heap="-Xms256m -Xmx1g"
cluster_heap="-Xms128m -Xmx512m"

java_opts() {  # NODE_DIR HEAP: the broker JVM's options, for format and start alike
    echo "$2 -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true" \
         "-Dlog4j2.configurationFile=$here/log4j2.properties -Dkafka.logs.dir=$1/logs"
}

node_properties() {  # NODE_DIR ID PORT CONTROLLER_PORT VOTERS INTERNAL_RF INTERNAL_MIN_ISR
    sed -e "s#@PORT@#$3#g" -e "s#@CONTROLLER_PORT@#$4#g" -e "s#@DATA@#$1/data#g" -e "s#@NODE_ID@#$2#g" \
        -e "s#@VOTERS@#$5#g" -e "s#@INTERNAL_RF@#$6#g" -e "s#@INTERNAL_MIN_ISR@#$7#g" \
        "$here/server.properties.in"
    # Failover timing: Kafka's defaults unless set (see the top of this file).
    [ -n "${KAFKA_BROKER_SESSION_TIMEOUT_MS:-}" ] && echo "broker.session.timeout.ms=$KAFKA_BROKER_SESSION_TIMEOUT_MS"
    [ -n "${KAFKA_BROKER_HEARTBEAT_INTERVAL_MS:-}" ] && echo "broker.heartbeat.interval.ms=$KAFKA_BROKER_HEARTBEAT_INTERVAL_MS"
    [ -n "${KAFKA_REPLICA_LAG_TIME_MAX_MS:-}" ] && echo "replica.lag.time.max.ms=$KAFKA_REPLICA_LAG_TIME_MAX_MS"
    return 0
}

format_node() {  # NODE_DIR CLUSTER_ID HEAP [FORMAT_ARGS...]
    local dir="$1" cid="$2" heap="$3"
    shift 3
    # shellcheck disable=SC2046
    java $(java_opts "$dir" "$heap") -cp "$libs/*" kafka.tools.StorageTool format -t "$cid" \
        -c "$dir/server.properties" "$@" >"$dir/logs/format.log" 2>&1 \
        || { cat "$dir/logs/format.log" >&2; exit 1; }
}

start_node() {  # NODE_DIR HEAP: the one command line that starts a node (first start or restart)
    local dir="$1" heap="$2"
    # setsid: the broker outlives this script and make's process group; >>: a restart keeps the
    # earlier run's output
    # shellcheck disable=SC2046
    setsid java $(java_opts "$dir" "$heap") -cp "$libs/*" kafka.Kafka "$dir/server.properties" \
        >>"$dir/logs/stdout.log" 2>&1 < /dev/null &
    echo $! > "$dir/kafka.pid"
}

node_alive() { [ -f "$1/kafka.pid" ] && kill -0 "$(cat "$1/kafka.pid")" 2>/dev/null; }

stop_pids() {  # PID...: SIGTERM them all at once, wait up to 60 s, then SIGKILL what is left
    local pid left
    kill -TERM "$@" 2>/dev/null || true
    for _ in $(seq 1 120); do
        left=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left=1; done
        [ "$left" = 0 ] && return 0
        sleep 0.5
    done
    for pid in "$@"; do
        if kill -0 "$pid" 2>/dev/null; then
            echo "kafka: broker $pid ignored SIGTERM for 60s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

# --- a KAFKA_BROKERS=N cluster: $state/nodes holds one "ID PORT CONTROLLER_PORT" line per node

cluster_ports() {  # the N client ports, one a line
    if [ -n "${KAFKA_PORTS:-}" ]; then
        tr ',' '\n' <<< "$KAFKA_PORTS"
    else
        seq "$port" $((port + brokers - 1))
    fi
}

cluster_bootstrap() { awk '{printf "%s127.0.0.1:%s", (NR > 1 ? "," : ""), $2} END {print ""}' "$state/nodes"; }

node_ready() {  # ID TIMEOUT_S: that node answers metadata and counts every node of the cluster
    local id="$1" nport
    nport="$(awk -v id="$id" '$1 == id {print $2}' "$state/nodes")"
    "$python" "$here/ready.py" "127.0.0.1:$nport" "$2" "$(cat "$state/node-$id/kafka.pid")" "$(wc -l < "$state/nodes")"
}

node_start() {  # ID: start a stopped node of the cluster on its own data, wait until ready
    local id="$1" dir="$state/node-$1"
    [ -f "$state/nodes" ] && [ -d "$dir" ] || {
        echo "kafka: no node $id in $state (start a cluster first: KAFKA_BROKERS=3 kafka.sh up)" >&2; exit 1; }
    if ! node_alive "$dir"; then
        jars
        start_node "$dir" "$(cat "$dir/heap")"
    fi
    node_ready "$id" 90 || { tail -n 20 "$dir/logs/server.log" >&2 2>/dev/null; exit 1; }
}

node_stop() {  # ID: SIGTERM (controlled shutdown: leadership moves away first), wait; data kept
    local dir="$state/node-$1"
    [ -d "$dir" ] || { echo "kafka: no node $1 in $state" >&2; exit 1; }
    if node_alive "$dir"; then stop_pids "$(cat "$dir/kafka.pid")"; echo "kafka: stopped node $1"; fi
}

cluster_up() {
    if [ "$security" != plaintext ]; then
        echo "kafka: KAFKA_BROKERS=$brokers runs plaintext only (KAFKA_SECURITY=$security is for one node)" >&2; exit 2
    fi
    if [ -f "$state/nodes" ]; then  # up again: start whichever nodes are down
        local id
        for id in $(awk '{print $1}' "$state/nodes"); do node_alive "$state/node-$id" || node_start "$id" >/dev/null; done
        for id in $(awk '{print $1}' "$state/nodes"); do node_ready "$id" 90; done
        cluster_bootstrap
        return 0
    fi
    if alive; then
        echo "kafka: a single broker runs on 127.0.0.1:$port; run kafka.sh down first" >&2; exit 1
    fi
    local ports=() nport id voters="" internal_rf=$((brokers < 3 ? brokers : 3)) internal_isr=$((brokers < 2 ? brokers : 2))
    mapfile -t ports < <(cluster_ports)
    if [ "${#ports[@]}" != "$brokers" ]; then
        echo "kafka: KAFKA_PORTS names ${#ports[@]} ports for KAFKA_BROKERS=$brokers" >&2; exit 2
    fi
    for nport in "${ports[@]}"; do
        port_free "$nport" || { echo "kafka: port $nport on 127.0.0.1 is already in use; set KAFKA_PORT (nodes use it and the next $((brokers - 1))) or KAFKA_PORTS" >&2; exit 1; }
    done
    jars
    rm -rf "$state"
    mkdir -p "$state"
    local taken=" ${ports[*]} " cport
    for id in $(seq 1 "$brokers"); do
        # a free port the kernel offers may be one that a client port above, or another node's
        # controller, is about to take (a caller may have picked the client ports the same way)
        cport="$(free_port)"
        while [[ "$taken" == *" $cport "* ]]; do cport="$(free_port)"; done
        taken+="$cport "
        echo "$id ${ports[$((id - 1))]} $cport" >> "$state/nodes"
    done
    voters="$(awk '{printf "%s%s@127.0.0.1:%s", (NR > 1 ? "," : ""), $1, $3}' "$state/nodes")"
    local cid heap="${KAFKA_HEAP_OPTS:-$cluster_heap}" formats=() pid
    cid="$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid)"
    echo "$cid" > "$state/cluster.id"
    while read -r id nport cport; do
        local dir="$state/node-$id"
        mkdir -p "$dir/data" "$dir/logs"
        { node_properties "$dir" "$id" "$nport" "$cport" "$voters" "$internal_rf" "$internal_isr"
          echo "default.replication.factor=$internal_rf"
          echo "min.insync.replicas=$internal_isr"
        } > "$dir/server.properties"
        echo "$heap" > "$dir/heap"  # node-start uses the same heap
        format_node "$dir" "$cid" "$heap" &  # one JVM each: in parallel
        formats+=($!)
    done < "$state/nodes"
    for pid in "${formats[@]}"; do wait "$pid" || { echo "kafka: formatting a node's storage failed" >&2; exit 1; }; done
    for id in $(awk '{print $1}' "$state/nodes"); do start_node "$state/node-$id" "$heap"; done
    for id in $(awk '{print $1}' "$state/nodes"); do
        if ! node_ready "$id" 120; then
            echo "kafka: node $id did not start; last lines of its log:" >&2
            tail -n 20 "$state/node-$id/logs/server.log" >&2 2>/dev/null || true
            cluster_down >/dev/null 2>&1 || true
            exit 1
        fi
    done
    cluster_bootstrap
}

cluster_down() {
    local pids=() id
    for id in $(awk '{print $1}' "$state/nodes"); do
        node_alive "$state/node-$id" && pids+=("$(cat "$state/node-$id/kafka.pid")")
    done
    if [ "${#pids[@]}" -gt 0 ]; then
        # All at once: stopped one by one, the last nodes would wait for a quorum that is gone.
        stop_pids "${pids[@]}"
        echo "kafka: stopped ${#pids[@]} node(s) of the cluster on $(cluster_bootstrap)"
    else
        echo "kafka: no node of the cluster on $(cluster_bootstrap) was running"
    fi
    rm -rf "$state"
}

up() {
    if [ -f "$state/nodes" ] || [ "$brokers" -gt 1 ]; then cluster_up; return; fi
    if alive; then
        local running
        running="$(cat "$state/security" 2>/dev/null || echo plaintext)"
        if [ "$running" != "$security" ]; then
            echo "kafka: the broker on 127.0.0.1:$port runs with KAFKA_SECURITY=$running, not $security; run kafka.sh down first" >&2
            exit 1
        fi
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
    unset KAFKA_CLIENT_PROPERTIES  # a stale secure state's, now removed
    mkdir -p "$state/data" "$state/logs"
    cport="$(free_port)"
    node_properties "$state" 1 "$port" "$cport" "1@127.0.0.1:$cport" 1 1 > "$state/server.properties"
    local format_args=()
    if [ "$security" = sasl_ssl ]; then
        secure_setup
        export KAFKA_CLIENT_PROPERTIES="$state/admin-client.properties"
    fi
    local cid
    cid="$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid)"
    format_node "$state" "$cid" "${KAFKA_HEAP_OPTS:-$single_heap}" "${format_args[@]}"
    start_node "$state" "${KAFKA_HEAP_OPTS:-$single_heap}"
    if ! "$python" "$here/ready.py" "127.0.0.1:$port" 90 "$(cat "$pidfile")"; then
        echo "kafka: start-up failed; last lines of $state/logs:" >&2
        tail -n 20 "$state/logs/stdout.log" "$state/logs/server.log" >&2 2>/dev/null || true
        down >/dev/null 2>&1 || true
        exit 1
    fi
    if [ "$security" = sasl_ssl ]; then
        echo "kafka: SASL_SSL (SCRAM-SHA-512) with ACLs; CA $state/tls/ca.pem; admin's client settings $state/admin-client.properties" >&2
    fi
    echo "127.0.0.1:$port"
}

down() {
    if [ -f "$state/nodes" ]; then cluster_down; return; fi
    if alive; then
        stop_pids "$(cat "$pidfile")"
        echo "kafka: stopped broker on 127.0.0.1:$port"
    else
        echo "kafka: no broker running on 127.0.0.1:$port"
    fi
    rm -rf "$state"
}

tool() {  # Apache Kafka's CLI tools: the main classes bin/kafka-*.sh run, on the broker's jars
    local name="${1:-}" main config_flag=--command-config
    case "$name" in
        kafka-topics) main=org.apache.kafka.tools.TopicCommand ;;
        kafka-consumer-groups) main=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
        kafka-console-consumer) main=org.apache.kafka.tools.consumer.ConsoleConsumer; config_flag=--consumer.config ;;
        kafka-console-producer) main=org.apache.kafka.tools.ConsoleProducer; config_flag=--producer.config ;;
        kafka-get-offsets) main=org.apache.kafka.tools.GetOffsetShell ;;
        *) echo "kafka: tool must be one of kafka-topics, kafka-consumer-groups, kafka-console-consumer," \
                "kafka-console-producer, kafka-get-offsets (got '$name')" >&2; exit 2 ;;
    esac
    shift
    if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && port_free "$port"; then
        # the tools themselves would retry for a minute before they say so
        echo "kafka: no broker listens on 127.0.0.1:$port (make kafka-up, or set KAFKA_PORT or KAFKA_BOOTSTRAP_SERVERS)" >&2
        exit 1
    fi
    jars
    local args=(--bootstrap-server "${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:$port}")
    if [ -n "${KAFKA_TOOLS_CONFIG:-}" ]; then args+=("$config_flag" "$KAFKA_TOOLS_CONFIG"); fi
    # A short-lived JVM: quick start-up matters more than peak speed.
    exec java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xmx512m -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$here/tools-log4j2.properties" \
        -cp "$libs/*" "$main" "${args[@]}" "$@"
}

case "${1:-}" in
    jars) jars ;;
    up) up ;;
    down) down ;;
    node-start|node-stop)
        [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 $1 NODE_ID (1..N)" >&2; exit 2; }
        "${1/-/_}" "$2" ;;
    tool) shift; tool "$@" ;;
    *) echo "usage: $0 up|down|jars|node-start ID|node-stop ID|tool NAME [ARGS...]" >&2; exit 2 ;;
esac
