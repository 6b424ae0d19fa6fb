#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft, broker+controller in one JVM) from Maven Central jars,
# bound to 127.0.0.1, for development and tests on machines without Docker.
#
#   kafka.sh up     start (idempotent); prints the bootstrap address once metadata answers
#   kafka.sh down   SIGTERM, wait for exit, remove the data
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
# KAFKA_SECURITY=sasl_ssl starts the broker with one SASL_SSL listener instead (SCRAM-SHA-512,
# a CA and broker certificate made with keytool for this run, ACLs by StandardAuthorizer) and
# the super user admin (password KAFKA_ADMIN_PASSWORD, else a random one). In the state
# folder: tls/ca.pem (the CA clients trust), admin.password, and admin-client.properties
# (librdkafka settings for admin, e.g. `kcat -F`). Default: plaintext, no ACLs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
port="${KAFKA_PORT:-9092}"
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

up() {
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
    sed -e "s#@PORT@#$port#g" -e "s#@CONTROLLER_PORT@#$cport#g" -e "s#@DATA@#$state/data#g" \
        "$here/server.properties.in" > "$state/server.properties"
    local format_args=()
    if [ "$security" = sasl_ssl ]; then
        secure_setup
        export KAFKA_CLIENT_PROPERTIES="$state/admin-client.properties"
    fi
    local cp="$libs/*"
    local opts="-Xms256m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true"
    opts="$opts -Dlog4j2.configurationFile=$here/log4j2.properties -Dkafka.logs.dir=$state/logs"
    local cid
    cid="$(java -cp "$cp" kafka.tools.StorageTool random-uuid)"
    # shellcheck disable=SC2086
    java $opts -cp "$cp" kafka.tools.StorageTool format -t "$cid" -c "$state/server.properties" "${format_args[@]}" >"$state/logs/format.log" 2>&1 \
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
    if [ "$security" = sasl_ssl ]; then
        echo "kafka: SASL_SSL (SCRAM-SHA-512) with ACLs; CA $state/tls/ca.pem; admin's client settings $state/admin-client.properties" >&2
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
    tool) shift; tool "$@" ;;
    *) echo "usage: $0 up|down|jars|tool NAME [ARGS...]" >&2; exit 2 ;;
esac
