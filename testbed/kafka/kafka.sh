#!/usr/bin/env bash
# Local Apache Kafka test broker: one combined KRaft broker+controller, run from the
# release jars (resolved by Maven into a cache outside the repository).
#
#   testbed/kafka/kafka.sh up|down|status|pause|resume|restart
#
# Environment:
#   KAFKA_INSTANCE   instance name (default main); state in .local/kafka/<instance>/
#   KAFKA_PORT_BASE  first port (default 19092): PLAINTEXT = base, SASL_SSL = base+1,
#                    CONTROLLER = base+2; all bound to 127.0.0.1
#   KAFKA_HEAP_OPTS  broker heap (default -Xms64m -Xmx512m)
#   KAFKA_START_TIMEOUT  seconds to wait for the listeners (default 90)
#   KAFKA_CDS        1 (default): keep a class-data-sharing archive of the broker's
#                    classes in the jar cache (written when the broker first stops),
#                    which cuts JVM start time; 0 turns it off
#   XDG_CACHE_HOME   jar cache root (default ~/.cache)
#   JAVA_HOME, PYTHON  java and python3 to use
#
# `up` writes .local/kafka.env (instance main) or .local/kafka-<instance>.env with the
# addresses, CA paths and SCRAM credentials (see dev/testkit/kafka_broker.py).
# `status` exits 0 when running, 2 when paused, 1 when not running.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

INSTANCE="${KAFKA_INSTANCE:-main}"
BASE="${KAFKA_PORT_BASE:-19092}"
PYTHON="${PYTHON:-python3}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms64m -Xmx512m}"

die() { echo "kafka $INSTANCE: error: $*" >&2; exit 1; }
say() { echo "kafka $INSTANCE: $*" >&2; }

[[ "$INSTANCE" =~ ^[A-Za-z0-9][A-Za-z0-9_-]*$ ]] || die "KAFKA_INSTANCE must match [A-Za-z0-9][A-Za-z0-9_-]*"
[[ "$INSTANCE" != ca ]] || die "KAFKA_INSTANCE 'ca' is reserved"
[[ "$BASE" =~ ^[0-9]+$ ]] && ((BASE >= 1024 && BASE <= 65532)) || die "KAFKA_PORT_BASE must be 1024..65532"

PORT_PLAIN=$BASE
PORT_SASL=$((BASE + 1))
PORT_CTRL=$((BASE + 2))
PLAIN_ADDR="127.0.0.1:$PORT_PLAIN"
SASL_ADDR="localhost:$PORT_SASL"

LOCAL="$ROOT/.local"
SHARED="$LOCAL/kafka"
CA_DIR="$SHARED/ca"
CREDS="$SHARED/credentials.env"
LOCKS="$SHARED/.locks"
STATE="$SHARED/$INSTANCE"
DATA="$STATE/data"
CONFIG="$STATE/server.properties"
PID_FILE="$STATE/kafka.pid"
LOG="$STATE/kafka.log"
if [[ "$INSTANCE" == main ]]; then ENV_FILE="$LOCAL/kafka.env"; else ENV_FILE="$LOCAL/kafka-$INSTANCE.env"; fi

POM="$HERE/pom.xml"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
[[ -n "$KAFKA_VERSION" ]] || die "no <kafka.version> in $POM"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/loader-ws-trades/kafka-$KAFKA_VERSION"
LIBS="$CACHE/libs"
MAIN_CLASS=kafka.Kafka
STORAGE_TOOL=kafka.tools.StorageTool
ACL_TOOL=org.apache.kafka.tools.AclCommand
# short-lived tools: quick JVM start matters more than peak speed
TOOL_OPTS=(-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true
           "-Dlog4j2.configurationFile=$HERE/log4j2-tools.properties")

# ACLs for the SCRAM users; `nobody` gets none. One line per AclCommand run.
ACL_SPECS=(
  "--allow-principal User:producer --resource-pattern-type prefixed --topic wf- --operation Read --operation Write --operation Describe --operation Create --operation DescribeConfigs"
  "--allow-principal User:producer --topic queue-events --operation Write --operation Describe --operation Create --operation Read"
  "--allow-principal User:producer --topic queue-control --operation Read --operation Describe"
  "--allow-principal User:producer --cluster --operation IdempotentWrite --operation Describe"
)

now() { date +%s.%N; }

# Hold an exclusive lock on fd 9 (per name) until the script exits.
lock() {
  mkdir -p "$LOCKS"
  exec 9>"$LOCKS/$1.lock"
  flock -w 600 9 || die "timed out waiting for lock $1"
}

sha() { sha256sum | cut -c1-64; }

# ---------------------------------------------------------------- jars
resolve_jars() {
  local want; want="$(sha <"$POM")"
  if [[ -f "$LIBS/.complete" && "$(cat "$LIBS/.complete")" == "$want" ]]; then return 0; fi
  command -v mvn >/dev/null || die "mvn not found (needed once to fetch Kafka $KAFKA_VERSION)"
  say "resolving Kafka $KAFKA_VERSION jars into $LIBS"
  mkdir -p "$CACHE"
  local tmp="$CACHE/libs.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$STATE"
  if ! mvn -B -q -f "$POM" dependency:copy-dependencies -DoutputDirectory="$tmp" >"$STATE/maven.log" 2>&1; then
    cat "$STATE/maven.log" >&2
    rm -rf "$tmp"
    die "Maven could not resolve the Kafka jars"
  fi
  ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null || die "kafka_2.13-$KAFKA_VERSION.jar missing after Maven"
  echo "$want" >"$tmp/.complete"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
}

# ---------------------------------------------------------------- TLS material
make_ca() { # name, common name
  cat >"$1.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
x509_extensions = ca
[dn]
CN = $2
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1.key" 2>/dev/null
  openssl req -x509 -new -config "$1.cnf" -key "$1.key" -sha256 -days 3650 -out "$1.crt"
  rm -f "$1.cnf"
}

ensure_certs() {
  local f missing=0
  for f in ca.crt ca.key broker.key broker.crt broker.pem other-ca.crt; do
    [[ -s "$CA_DIR/$f" ]] || missing=1
  done
  ((missing)) || return 0
  command -v openssl >/dev/null || die "openssl not found"
  say "generating test CA and broker certificate in $CA_DIR"
  local tmp="$SHARED/ca.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  (
    set -e
    umask 077
    cd "$tmp"
    make_ca ca "loader-ws-trades test CA"
    make_ca other-ca "loader-ws-trades untrusted test CA"
    rm -f other-ca.key   # signs nothing
    cat >broker.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = localhost
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
    # genpkey writes PKCS#8 ("BEGIN PRIVATE KEY"), the only unencrypted form Kafka's PEM key store reads
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out broker.key 2>/dev/null
    openssl req -new -config broker.cnf -key broker.key -out broker.csr
    openssl x509 -req -in broker.csr -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
      -days 3650 -sha256 -extfile broker.cnf -extensions leaf -out broker.crt 2>/dev/null
    cat broker.key broker.crt ca.crt >broker.pem   # key + chain, for ssl.keystore.type=PEM
    rm -f broker.csr broker.cnf
    chmod 644 ca.crt other-ca.crt broker.crt
  ) || { rm -rf "$tmp"; die "certificate generation failed"; }
  rm -rf "$CA_DIR"
  mv "$tmp" "$CA_DIR"
}

ensure_creds() {
  if [[ ! -s "$CREDS" ]]; then
    say "generating SCRAM credentials in $CREDS"
    (
      umask 077
      {
        echo "KAFKA_ADMIN_PASSWORD=$(openssl rand -hex 16)"
        echo "KAFKA_PRODUCER_PASSWORD=$(openssl rand -hex 16)"
        echo "KAFKA_NOPERM_PASSWORD=$(openssl rand -hex 16)"
      } >"$CREDS.tmp.$$"
      mv "$CREDS.tmp.$$" "$CREDS"
    )
  fi
  # shellcheck disable=SC1090
  source "$CREDS"
  [[ -n "${KAFKA_ADMIN_PASSWORD:-}" && -n "${KAFKA_PRODUCER_PASSWORD:-}" && -n "${KAFKA_NOPERM_PASSWORD:-}" ]] \
    || die "$CREDS is incomplete; delete it (and .local/kafka/*/data) to regenerate"
}

# ---------------------------------------------------------------- process
# PID of this instance's broker, or nothing (also clears a stale PID file).
broker_pid() {
  [[ -f "$PID_FILE" ]] || return 0
  local pid; pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  if [[ "$pid" =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/cmdline ]] \
     && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$MAIN_CLASS $CONFIG"; then
    echo "$pid"
  else
    rm -f "$PID_FILE"
  fi
}

is_paused() { [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" == T ]]; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_ready() { # timeout, pid
  "$PYTHON" "$HERE/wait_ready.py" "$PLAIN_ADDR" --metadata --timeout "$1" --pid "$2" --quiet &&
    "$PYTHON" "$HERE/wait_ready.py" "$SASL_ADDR" --tls --cafile "$CA_DIR/ca.crt" --timeout "$1" --pid "$2" --quiet
}

# ---------------------------------------------------------------- JVM start
check_java() {
  local java_bin; java_bin="$(command -v "$JAVA")" || die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"
  local release; release="$(dirname "$(dirname "$(readlink -f "$java_bin")")")/release"
  local version; version="$(sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$release" 2>/dev/null || true)"
  if [[ -n "$version" ]] && ((version < 17)); then
    die "$java_bin is Java $version; Kafka $KAFKA_VERSION needs Java 17+ (set JAVA_HOME)"
  fi
}

# Class-data-sharing: the first broker run dumps the classes it loaded into an archive
# when it exits (down); later starts map the archive instead of loading and verifying
# every class again. The archive is tied to the JVM build and the jar set.
CDS_PENDING="$STATE/cds.pending"
cds_opts() {
  [[ "${KAFKA_CDS:-1}" == 1 ]] || return 0
  local java_bin; java_bin="$(readlink -f "$(command -v "$JAVA")")" || return 0
  local key; key="$(echo "$java_bin $(stat -c %Y "$java_bin") $(cat "$LIBS/.complete")" | sha | cut -c1-16)"
  local archive="$CACHE/cds-$key.jsa"
  rm -f "$CACHE/cds-"*".$INSTANCE.tmp"
  if [[ -s "$archive" ]]; then
    rm -f "$CDS_PENDING"
    echo "-XX:SharedArchiveFile=$archive"
  else
    echo "$archive" >"$CDS_PENDING"
    echo "-XX:ArchiveClassesAtExit=$archive.$INSTANCE.tmp"
  fi
}

# after the broker exited: keep the archive it dumped if it stopped cleanly
cds_collect() { # clean (1/0)
  [[ -f "$CDS_PENDING" ]] || return 0
  local archive; archive="$(cat "$CDS_PENDING")"
  rm -f "$CDS_PENDING"
  if (($1)) && [[ -s "$archive.$INSTANCE.tmp" ]]; then
    mv -f "$archive.$INSTANCE.tmp" "$archive"
  else
    rm -f "$archive.$INSTANCE.tmp"
  fi
}

# ---------------------------------------------------------------- config
write_config() {
  local tmp="$CONFIG.tmp.$$"
  (
    umask 077
    cat >"$tmp" <<EOF
# generated by testbed/kafka/kafka.sh on every start; edits are lost
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$PORT_CTRL
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$PORT_PLAIN,SASL_SSL://127.0.0.1:$PORT_SASL,CONTROLLER://127.0.0.1:$PORT_CTRL
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT_PLAIN,SASL_SSL://localhost:$PORT_SASL
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA

# single node, quick to start
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
# the log cleaner's dedupe buffer is 128 MB of heap by default
log.cleaner.dedupe.buffer.size=8388608

# authorization: PLAINTEXT and CONTROLLER are unauthenticated (User:ANONYMOUS, super user);
# ACLs apply to the SCRAM/PLAIN users on SASL_SSL
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false

# SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_admin="$KAFKA_ADMIN_PASSWORD" user_producer="$KAFKA_PRODUCER_PASSWORD" user_nobody="$KAFKA_NOPERM_PASSWORD";
ssl.keystore.type=PEM
ssl.keystore.location=$CA_DIR/broker.pem
ssl.client.auth=none
EOF
  )
  mv "$tmp" "$CONFIG"
  cat >"$STATE/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.appinfo.name = org.apache.kafka.common.utils.AppInfoParser
logger.appinfo.level = warn
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
EOF
}

format_storage() {
  local want; want="$(sha <"$CREDS")"
  if [[ -f "$DATA/meta.properties" ]]; then
    [[ -f "$STATE/credentials.sha256" && "$(cat "$STATE/credentials.sha256")" == "$want" ]] && return 0
    say "credentials changed; wiping $DATA"
  fi
  rm -rf "$DATA" "$STATE/acls.sha256"
  local cluster_id
  cluster_id="$(openssl rand 16 | base64 | tr '+/' '-_' | tr -d '=\n')"
  local scram=() user pass mech
  for user in admin producer nobody; do
    case $user in
      admin) pass=$KAFKA_ADMIN_PASSWORD ;; producer) pass=$KAFKA_PRODUCER_PASSWORD ;; nobody) pass=$KAFKA_NOPERM_PASSWORD ;;
    esac
    for mech in SCRAM-SHA-512 SCRAM-SHA-256; do
      scram+=(--add-scram "$mech=[name=$user,password=$pass]")
    done
  done
  if ! "$JAVA" "${TOOL_OPTS[@]}" -cp "$LIBS/*" "$STORAGE_TOOL" format -t "$cluster_id" -c "$CONFIG" \
       "${scram[@]}" >"$STATE/format.log" 2>&1; then
    cat "$STATE/format.log" >&2
    rm -rf "$DATA"
    die "kafka-storage format failed"
  fi
  echo "$want" >"$STATE/credentials.sha256"
}

ensure_acls() {
  local want; want="$(printf '%s\n' "${ACL_SPECS[@]}" | sha)"
  [[ -f "$STATE/acls.sha256" && "$(cat "$STATE/acls.sha256")" == "$want" ]] && return 0
  local spec pids=() ok=1 i=0
  # adding an existing ACL is a no-op, so this is safe to repeat
  for spec in "${ACL_SPECS[@]}"; do
    # shellcheck disable=SC2086
    "$JAVA" "${TOOL_OPTS[@]}" -cp "$LIBS/*" "$ACL_TOOL" --bootstrap-server "$PLAIN_ADDR" --add $spec \
      >"$STATE/acl.$i.log" 2>&1 &
    pids+=($!); i=$((i + 1))
  done
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then ok=0; cat "$STATE/acl.$i.log" >&2; fi
  done
  ((ok)) || die "creating ACLs failed"
  rm -f "$STATE"/acl.*.log
  echo "$want" >"$STATE/acls.sha256"
}

write_env() {
  local tmp="$ENV_FILE.tmp.$$"
  (
    umask 077
    cat >"$tmp" <<EOF
KAFKA_TESTBED_INSTANCE=$INSTANCE
KAFKA_TESTBED_PLAINTEXT=$PLAIN_ADDR
KAFKA_TESTBED_SASL_SSL=$SASL_ADDR
KAFKA_TESTBED_CA_PATH=$CA_DIR/ca.crt
KAFKA_TESTBED_OTHER_CA_PATH=$CA_DIR/other-ca.crt
KAFKA_TESTBED_ADMIN_USER=admin
KAFKA_TESTBED_ADMIN_PASSWORD=$KAFKA_ADMIN_PASSWORD
KAFKA_TESTBED_PRODUCER_USER=producer
KAFKA_TESTBED_PRODUCER_PASSWORD=$KAFKA_PRODUCER_PASSWORD
KAFKA_TESTBED_NOPERM_USER=nobody
KAFKA_TESTBED_NOPERM_PASSWORD=$KAFKA_NOPERM_PASSWORD
KAFKA_TESTBED_PID_FILE=$PID_FILE
KAFKA_TESTBED_LOG=$LOG
EOF
  )
  if cmp -s "$tmp" "$ENV_FILE"; then rm -f "$tmp"; else mv "$tmp" "$ENV_FILE"; fi
}

# ---------------------------------------------------------------- commands
cmd_up() {
  local t0; t0="$(now)"
  mkdir -p "$STATE"
  lock "instance-$INSTANCE"
  local pid; pid="$(broker_pid)"
  if [[ -n "$pid" ]]; then
    grep -qF "PLAINTEXT://127.0.0.1:$PORT_PLAIN," "$CONFIG" \
      || die "already running (pid $pid) with other ports; run down first"
    if is_paused "$pid"; then say "was paused; resuming"; kill -CONT "$pid"; fi
    wait_ready 30 "$pid" || die "running (pid $pid) but not answering; see $LOG"
    ensure_creds
    write_env
    echo "kafka $INSTANCE already running (pid $pid) on $PLAIN_ADDR, $SASL_ADDR"
    return 0
  fi
  local port
  for port in "$PORT_PLAIN" "$PORT_SASL" "$PORT_CTRL"; do
    port_busy "$port" && die "port $port is already in use (choose another KAFKA_PORT_BASE)"
  done

  check_java
  (
    lock shared
    resolve_jars
    ensure_certs
    ensure_creds
  )
  ensure_creds
  write_config
  format_storage

  if [[ -f "$LOG" ]] && (($(stat -c %s "$LOG") > 20000000)); then mv -f "$LOG" "$LOG.1"; fi
  echo "===== $(date -u +%FT%TZ) starting Kafka $KAFKA_VERSION =====" >>"$LOG"
  # setsid detaches the broker from the caller's terminal, so a Ctrl-C there does not reach it.
  # The inner shell writes its PID and execs java, so the PID file names the JVM.
  # explicit, sorted class path: the class-data-sharing archive must see the same one each time
  local classpath; classpath="$(printf '%s:' "$LIBS"/*.jar)"
  # shellcheck disable=SC2086,SC2046
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
    "$JAVA" $HEAP_OPTS -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    $(cds_opts) -Xlog:cds=error,cds+dynamic=error \
    "-Dlog4j2.configurationFile=$STATE/log4j2.properties" \
    -cp "${classpath%:}" "$MAIN_CLASS" "$CONFIG" \
    </dev/null >>"$LOG" 2>&1 9>&- &
  local launcher=$!
  for _ in $(seq 50); do [[ -s "$PID_FILE" ]] && break; sleep 0.02; done
  pid="$(cat "$PID_FILE" 2>/dev/null || echo "$launcher")"

  if ! wait_ready "$START_TIMEOUT" "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PID_FILE"
    cds_collect 0
    echo "----- last lines of $LOG -----" >&2
    tail -n 40 "$LOG" >&2
    die "broker did not start"
  fi
  ensure_acls
  write_env
  local t1; t1="$(now)"
  echo "kafka $INSTANCE up in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')s (pid $pid) on $PLAIN_ADDR, $SASL_ADDR; env in $ENV_FILE"
}

cmd_down() {
  mkdir -p "$STATE"
  lock "instance-$INSTANCE"
  local pid; pid="$(broker_pid)"
  if [[ -z "$pid" ]]; then echo "kafka $INSTANCE not running"; return 0; fi
  local t0; t0="$(now)"
  kill -TERM "$pid" 2>/dev/null || true
  kill -CONT "$pid" 2>/dev/null || true   # a paused JVM cannot handle SIGTERM
  local i clean=1
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "still running after 20s; killing"
    clean=0
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$PID_FILE"
  cds_collect "$clean"
  echo "kafka $INSTANCE down in $(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}')s (was pid $pid)"
}

cmd_status() {
  local pid; pid="$(broker_pid)"
  if [[ -z "$pid" ]]; then echo "kafka $INSTANCE not running"; return 1; fi
  if is_paused "$pid"; then echo "kafka $INSTANCE paused (pid $pid)"; return 2; fi
  echo "kafka $INSTANCE running (pid $pid) on $PLAIN_ADDR, $SASL_ADDR"
}

cmd_signal() { # signal, verb
  local pid; pid="$(broker_pid)"
  [[ -n "$pid" ]] || die "not running"
  kill "-$1" "$pid"
  echo "kafka $INSTANCE $2 (pid $pid)"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  pause) cmd_signal STOP paused ;;
  resume) cmd_signal CONT resumed ;;
  restart) (cmd_down) && cmd_up ;;
  *) echo "usage: [KAFKA_INSTANCE=main] [KAFKA_PORT_BASE=19092] $0 up|down|status|pause|resume|restart" >&2; exit 64 ;;
esac
