#!/usr/bin/env bash
# rss.sh — a proxy's memory (RSS) with many open client connections: baton
# beside HAProxy, on this machine, in one run.
#
# Three phases per proxy, each with the proxy started afresh (CPU 1; baton
# with GOMAXPROCS=1, HAProxy nbthread 1) in front of one nginx backend (CPU 0):
#   idle   IDLE clients (default 10 000) each send one GET (1 KiB answer) and
#          keep the connection open, silent (keep-alive);
#   slow   DOWNLOADS clients (default 1 000) each download a large file that
#          the backend sends at RATE per connection (nginx limit_rate), so
#          bytes keep flowing through the proxy while it is measured;
#   reader DOWNLOADS clients each download the same file from a full-speed
#          backend but read it at RATE per connection (SO_RCVBUF 64 KiB), so
#          the proxy holds what the client has not taken yet.
# Clients: examples/bench/idleconns (built here with Go), on CPU 0. For each
# phase: VmRSS just before the clients connect ("at rest", after one request),
# then, once all are open and SETTLE s have passed, VmRSS sampled every second
# for DURATION s (the largest sample is reported) and VmHWM (peak since the
# proxy started). Socket buffers are kernel memory and not part of RSS.
#
# usage: rss.sh --bin ./baton [options]
#   --bin PATH       baton binary (or env BATON_BIN); needed unless --only haproxy
#   --only LIST      proxies, comma-separated: baton,haproxy (default both)
#   --phases LIST    idle,slow,reader (default all three)
#   --idle N         idle keep-alive connections (default 10000)
#   --downloads N    concurrent slow downloads (default 1000)
#   --rate R         bytes per second per download, nginx syntax (default 16k)
#   --duration S     seconds RSS is sampled per phase (default 10)
#   --settle S       seconds between "all open" and sampling (default 3)
#   --quick          smoke check: --duration 3 --settle 1
#   --keep           keep the temp dir (configs, logs)
#   -h, --help       this text
# Ports (127.0.0.1; the script stops if one is taken): backend 21080, baton
# 28080, haproxy 28083. Needs nginx, haproxy, curl, taskset, Go; missing
# Debian packages are installed with apt-get when run as root.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ME=rss.sh
# shellcheck source=lib.sh
. "$HERE/lib.sh"

BIN=${BATON_BIN:-} ONLY=baton,haproxy PHASES=idle,slow,reader
IDLE=10000 DOWNLOADS=1000 RATE=16k DURATION=10 SETTLE=3
while (($#)); do
  case $1 in
    --bin) BIN=${2:?--bin needs a path}; shift 2 ;;
    --only) ONLY=${2:?--only needs a list}; shift 2 ;;
    --phases) PHASES=${2:?--phases needs a list}; shift 2 ;;
    --idle) IDLE=${2:?}; shift 2 ;;
    --downloads) DOWNLOADS=${2:?}; shift 2 ;;
    --rate) RATE=${2:?}; shift 2 ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --settle) SETTLE=${2:?}; shift 2 ;;
    --quick) DURATION=3 SETTLE=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage_from_header; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done
posint --idle "$IDLE"; posint --downloads "$DOWNLOADS"; posint --duration "$DURATION"
[[ $SETTLE =~ ^[0-9]+$ ]] || die "--settle must be a whole number of seconds"
case $RATE in
  *[kK]) RATE_BYTES=$((${RATE%?} * 1024)) ;;
  *[mM]) RATE_BYTES=$((${RATE%?} * 1048576)) ;;
  *) RATE_BYTES=$RATE ;;
esac
[[ $RATE_BYTES =~ ^[0-9]+$ && $RATE_BYTES -gt 0 ]] || die "--rate must be bytes per second, e.g. 16k"

PROXIES=() RUN_PHASES=()
IFS=, read -ra want <<<"$ONLY"
for w in "${want[@]}"; do
  case $w in baton|haproxy) PROXIES+=("$w") ;; *) die "--only: unknown proxy '$w' (baton, haproxy)" ;; esac
done
IFS=, read -ra want <<<"$PHASES"
for w in "${want[@]}"; do
  case $w in idle|slow|reader) RUN_PHASES+=("$w") ;; *) die "--phases: unknown phase '$w' (idle, slow, reader)" ;; esac
done
((${#PROXIES[@]} && ${#RUN_PHASES[@]})) || die "nothing to measure"
has() { local x=$1 y; shift; for y in "$@"; do [[ $x == "$y" ]] && return 0; done; return 1; }
if has baton "${PROXIES[@]}"; then
  [[ -n $BIN ]] || die "baton needs --bin PATH (or BATON_BIN); or use --only haproxy"
  BIN=$(abs_bin "$BIN")
fi

tools=(nginx:nginx curl:curl taskset:util-linux ps:procps)
has haproxy "${PROXIES[@]}" && tools+=(haproxy:haproxy)
need_tools "${tools[@]}"
command -v go >/dev/null || die "building the clients (idleconns) needs Go 1.21 or newer on PATH"
NGINX=$(find_bin nginx) HAPROXY=""
has haproxy "${PROXIES[@]}" && HAPROXY=$(find_bin haproxy)

# every process here needs a descriptor per connection (and the proxy two per
# download); HAProxy wants two per maxconn whatever they are used for. Take
# the hard limit, or raise it where that is allowed (root outside containers).
want=$((2 * (IDLE > DOWNLOADS ? IDLE : DOWNLOADS) + 1000))
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && ((hard < want)) && ulimit -n "$want" 2>/dev/null; then :
else ulimit -n "$([[ $hard == unlimited ]] && echo "$want" || echo "$hard")" 2>/dev/null || true; fi
NOFILE=$(ulimit -n)
((NOFILE > IDLE + 200)) || die "open-files limit $NOFILE is too low for --idle $IDLE (raise ulimit -Hn)"
((NOFILE > 2 * DOWNLOADS + 200)) || die "open-files limit $NOFILE is too low for --downloads $DOWNLOADS"

BACKEND_PORT=21080
declare -A PORT=([baton]=28080 [haproxy]=28083)
ports=("$BACKEND_PORT")
for p in "${PROXIES[@]}"; do ports+=("${PORT[$p]}"); done
ports_free "${ports[@]}"

setup_work rss-bench
mkdir -p "$WORK/bin" "$WORK/src/idleconns" "$WORK/backend" "$WORK/client"
say "building idleconns ..."
cp "$HERE/idleconns/main.go" "$WORK/src/idleconns/"
printf 'module idleconns\n\ngo 1.21\n' >"$WORK/src/idleconns/go.mod"
(cd "$WORK/src/idleconns" && GOWORK=off GOFLAGS=-buildvcs=false GOTOOLCHAIN=local \
   go build -o "$WORK/bin/idleconns" .) >&2 || die "building idleconns failed"

BACKEND=$HOST:$BACKEND_PORT
backend_conf "$WORK/backend" "$RATE" "$BACKEND_PORT"
backend_files "$WORK/backend" 1024
MAXCONN=$((IDLE > DOWNLOADS ? IDLE + 500 : DOWNLOADS + 500))
# HAProxy refuses to start when 2 × maxconn exceeds the open-files limit: it
# then gets fewer connections (shown in the table)
HA_MAXCONN=$(((NOFILE - 100) / 2 < MAXCONN ? (NOFILE - 100) / 2 : MAXCONN))
HA_IDLE=$((IDLE < HA_MAXCONN - 50 ? IDLE : (HA_MAXCONN - 50) / 100 * 100))
HA_DOWNLOADS=$((DOWNLOADS < HA_MAXCONN - 50 ? DOWNLOADS : (HA_MAXCONN - 50) / 100 * 100))
for p in "${PROXIES[@]}"; do
  d=$WORK/$p
  mkdir -p "$d"
  case $p in
    baton) cat >"$d/baton.yaml" <<EOF
listen: "$HOST:${PORT[baton]}"
state_file: "off"
admin:
  listen: "off"
log:
  access: false
server:
  idle_timeout: 300s
  shutdown_timeout: 2s
pools:
  - name: web
    backends:
      - name: b1
        address: "$BACKEND"
        version: v1
        weight: 100
EOF
    ;;
    haproxy) cat >"$d/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $HA_MAXCONN
defaults
    mode http
    maxconn $HA_MAXCONN
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
frontend bench
    bind $HOST:${PORT[haproxy]}
    default_backend web
backend web
    server b1 $BACKEND
EOF
    ;;
  esac
done

start_proxy() {                      # start_proxy NAME — sets PROXY_PID
  local p=$1 d=$WORK/$1
  ports_free "${PORT[$p]}"
  case $p in
    baton) start_bg "$d" "$PROXY_CPU" env GOMAXPROCS=1 "$BIN" serve -c "$d/baton.yaml" ;;
    haproxy) start_bg "$d" "$PROXY_CPU" "$HAPROXY" -db -f "$d/haproxy.cfg" ;;
  esac
  PROXY_PID=$STARTED_PID
  wait_listen "$p" "${PORT[$p]}" "$PROXY_PID" "$d"
  expect_get "$p" "http://$HOST:${PORT[$p]}/" 200 1024 "$d"
}

last_status() {                      # last_status LOG — "open bytes" of the last STATUS line
  awk '/^STATUS / { split($2, o, "="); split($3, b, "="); v = o[2] " " b[2] } END { print (v == "" ? "0 0" : v) }' "$1"
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

RESULTS=$WORK/results.txt
: >"$RESULTS"
measure() {                          # measure PROXY PHASE
  local p=$1 phase=$2 n args=() d=$WORK/client/$1.$2
  mkdir -p "$d"
  case $phase in
    idle) n=$IDLE args=(-mode idle -path /) ;;
    slow) n=$DOWNLOADS args=(-mode stream -path /slow) ;;
    reader) n=$DOWNLOADS args=(-mode stream -path /big -read-rate "$RATE_BYTES" -rcvbuf 65536) ;;
  esac
  if [[ $p == haproxy ]]; then
    [[ $phase == idle ]] && n=$HA_IDLE || n=$HA_DOWNLOADS
    ((n > 0)) || die "open-files limit $NOFILE leaves HAProxy no connections"
  fi
  start_proxy "$p"
  sleep 1
  local base
  base=$(tree_kb VmRSS "$PROXY_PID")
  local hold=$((SETTLE + DURATION + 120))
  start_bg "$d" "$LOAD_CPU" "$WORK/bin/idleconns" -addr "$HOST:${PORT[$p]}" -n "$n" \
    -timeout 90s -hold "${hold}s" "${args[@]}"
  local cpid=$STARTED_PID i
  for ((i = 0; i < 1000; i++)); do
    grep -q '^READY' "$d/out.log" 2>/dev/null && break
    alive "$cpid" || die "$p/$phase: the clients failed: $(tail -n 3 "$d/out.log")"
    alive "$PROXY_PID" || die "$p/$phase: $p exited: $(tail -n 10 "$WORK/$p/out.log")"
    sleep 0.1
  done
  grep -q '^READY' "$d/out.log" || die "$p/$phase: $n connections not open after 100 s"
  sleep "$SETTLE"
  local max=0 kb s0 s1 open0 bytes0 open1 bytes1
  read -r open0 bytes0 <<<"$(last_status "$d/out.log")"
  for ((i = 0; i < DURATION; i++)); do
    sleep 1
    kb=$(tree_kb VmRSS "$PROXY_PID")
    ((kb > max)) && max=$kb
  done
  read -r open1 bytes1 <<<"$(last_status "$d/out.log")"
  local hwm
  hwm=$(tree_kb VmHWM "$PROXY_PID")
  alive "$PROXY_PID" || die "$p/$phase: $p exited during the measurement"
  ((open1 == n)) || die "$p/$phase: only $open1 of $n connections still open at the end (the proxy closed some)"
  stop_pid "$cpid"
  stop_pid "$PROXY_PID"
  local flow
  flow=$(awk -v a="$bytes0" -v b="$bytes1" -v s="$DURATION" 'BEGIN { printf "%.2f", (b - a) / s / 1048576 }')
  echo "$p $phase $base $max $hwm $n $flow" >>"$RESULTS"
  say "$(printf '  %-8s %-6s %5d conns  at rest %6s MiB  RSS %7s MiB  peak %7s MiB  flow %s MiB/s' \
    "$p" "$phase" "$n" "$(mib "$base")" "$(mib "$max")" "$(mib "$hwm")" "$flow")"
}

LOAD=$(idle_load)
((LOAD <= 10)) || say "warning: other processes already use ${LOAD}% of a core"
say "starting the backend (nginx, 1 worker, CPU $LOAD_CPU) ..."
start_backend "$WORK/backend" "$BACKEND_PORT"
expect_get backend "http://$BACKEND/" 200 1024 "$WORK/backend"
say "proxies: ${PROXIES[*]}; phases: ${RUN_PHASES[*]}; ${SETTLE}s + ${DURATION}s per phase"
for phase in "${RUN_PHASES[@]}"; do
  for p in "${PROXIES[@]}"; do measure "$p" "$phase"; done
done

# ---- report ------------------------------------------------------------------
versions=$(version_line)
[[ -n $BIN ]] && versions+=", $("$BIN" version 2>/dev/null | head -n 1 || echo "baton ?")"
echo
echo "## Memory with many connections, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "$(nproc) CPUs, kernel $(uname -r); proxy on CPU $PROXY_CPU (baton GOMAXPROCS=1, HAProxy nbthread 1)," \
     "nginx backend and clients on CPU $LOAD_CPU; each phase starts the proxy afresh."
echo "Versions: $versions. Load by other processes before the start: ${LOAD}% of a core."
echo "Command: rss.sh --idle $IDLE --downloads $DOWNLOADS --rate $RATE --duration $DURATION --settle $SETTLE."
echo
awk -v idle="$IDLE" -v dl="$DOWNLOADS" -v nofile="$NOFILE" -v rate="$RATE" -v order="${PROXIES[*]}" -v phases="${RUN_PHASES[*]}" '
  function mib(k) { return sprintf("%.1f", k / 1024) }
  function cell(p, ph) {
    if (!((p, ph) in rss)) return "–"
    c = mib(rss[p, ph]) " (peak " mib(hwm[p, ph]) ")"
    if (n[p, ph] != (ph == "idle" ? idle : dl)) { c = c ", " n[p, ph] " conns"; fewer = 1 }
    return c
  }
  { base[$1, $2] = $3; rss[$1, $2] = $4; hwm[$1, $2] = $5; n[$1, $2] = $6; flow[$1, $2] = $7 }
  END {
    print "| proxy | RSS at rest, MiB | " idle " idle keep-alive conns, MiB | per idle conn, KiB | " \
          dl " slow downloads (backend " rate "/s each), MiB | " dl " slow readers (" rate "/s each), MiB |"
    print "|---|---:|---:|---:|---:|---:|"
    np = split(order, ps, " ")
    nph = split(phases, phs, " ")
    for (i = 1; i <= np; i++) {
      p = ps[i]
      b = ((p, "idle") in base) ? base[p, "idle"] : (((p, "slow") in base) ? base[p, "slow"] : base[p, "reader"])
      per = ((p, "idle") in rss) ? sprintf("%.1f", (rss[p, "idle"] - base[p, "idle"]) / n[p, "idle"]) : "–"
      printf "| %s | %s | %s | %s | %s | %s |\n", p, mib(b), cell(p, "idle"), per, cell(p, "slow"), cell(p, "reader")
    }
    print ""
    print "RSS: the largest VmRSS sampled once a second while all connections were open; peak: VmHWM since the"
    print "proxy started (includes opening the connections). Per idle conn: (RSS with them − RSS at rest) ÷ count."
    for (i = 1; i <= np; i++) for (j = 1; j <= nph; j++) {
      p = ps[i]; ph = phs[j]
      if (ph != "idle" && ((p, ph) in flow)) printf "Bytes through %s during the %s sampling: %s MiB/s.\n", p, ph, flow[p, ph]
    }
    if (fewer) printf "A cell marked \"N conns\" was measured with fewer connections: the open-files limit (%s) was too low for HAProxy'"'"'s maxconn (it asks for 2 descriptors per connection).\n", nofile
    if (("baton", "idle") in rss) {
      r = rss["baton", "idle"] / 1024
      printf "baton with %d idle keep-alive connections: %.1f MiB RSS (goal ≤ 100 MiB: %s).\n", idle, r, (r <= 100 ? "met" : "not met")
    }
  }' "$RESULTS"
