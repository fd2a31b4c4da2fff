#!/usr/bin/env bash
# scale.sh — how baton's CPU per request grows with the number of backends
# and of pools, on this machine, in one run.
#
# One nginx worker (CPU 0, with wrk) listens on 1000 ports, 127.0.0.1:20000
# to 20999, all answering 200 with 1 KiB: every port is a distinct backend
# for the proxy. Rows (baton on CPU 1, GOMAXPROCS=1, started afresh per run,
# default settings: round_robin, TCP health checks every 2 s per backend):
#   b4        1 pool, 4 backends (the default pool, no routes)
#   b64       1 pool, 64 backends
#   b1000     1 pool, 1000 backends
#   p100host  100 pools of 4 backends (400 in all), routed by Host
#             (p0.bench … p99.bench); requests spread evenly over them
#   p100path  100 pools of 4 backends, routed by path prefix (/p0/ … /p99/)
# With --haproxy, the same rows through HAProxy (nbthread 1, roundrobin,
# `check inter 2s` on every server; pools are backends picked by one
# use_backend rule with a map: map_str on the Host, map_beg on the path).
#
# Every row: wait until every backend is healthy, measure the proxy's CPU at
# rest for IDLE s (health checks and timers: "idle CPU"), warm up, then
# `wrk -t1 -c64 -dDURATION` with one Lua script for all rows (it cycles
# through precomputed requests: one for b*, 100 hosts or paths for p100*).
# CPU µs/req: the proxy's utime+stime (its process tree, /proc/PID/stat)
# during the wrk run ÷ requests; "net of idle" subtracts the idle CPU rate
# over the same time. Rows are interleaved RUNS times; medians are shown.
#
# usage: scale.sh --bin ./baton [options]
#   --bin PATH       baton binary (or env BATON_BIN)
#   --rows LIST      comma-separated, default b4,b64,b1000,p100host,p100path
#   --haproxy        also measure HAProxy with the same rows
#   --runs N         rounds (default 3)
#   --duration S     seconds measured per run (default 10)
#   --warmup S       seconds of load before each measured run (default 2)
#   --idle S         seconds of idle CPU measured per run (default 3)
#   --conns N        wrk connections (default 64)
#   --quick          smoke check: --runs 1 --duration 3 --warmup 1 --idle 2
#   --keep           keep the temp dir (configs, logs, wrk outputs)
#   -h, --help       this text
# Ports (127.0.0.1; the script stops if one is taken): backends 20000-20999,
# baton 28280 (admin 29290), haproxy 28283. Needs nginx, wrk, curl, taskset
# (and haproxy with --haproxy); missing Debian packages are installed with
# apt-get when run as root.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ME=scale.sh
# shellcheck source=lib.sh
. "$HERE/lib.sh"

BIN=${BATON_BIN:-} ROWLIST=b4,b64,b1000,p100host,p100path WITH_HAPROXY=0
RUNS=3 DURATION=10 WARMUP=2 IDLE=3 CONNS=64
while (($#)); do
  case $1 in
    --bin) BIN=${2:?--bin needs a path}; shift 2 ;;
    --rows) ROWLIST=${2:?--rows needs a list}; shift 2 ;;
    --haproxy) WITH_HAPROXY=1; shift ;;
    --runs) RUNS=${2:?}; shift 2 ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --warmup) WARMUP=${2:?}; shift 2 ;;
    --idle) IDLE=${2:?}; shift 2 ;;
    --conns) CONNS=${2:?}; shift 2 ;;
    --quick) RUNS=1 DURATION=3 WARMUP=1 IDLE=2; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage_from_header; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done
for v in RUNS DURATION WARMUP IDLE CONNS; do posint "--${v,,}" "${!v}"; done
[[ -n $BIN ]] || die "--bin PATH (or BATON_BIN) is needed"
BIN=$(abs_bin "$BIN")

# row → "pools backends-per-pool routing"
declare -A SHAPE=([b4]="1 4 none" [b64]="1 64 none" [b1000]="1 1000 none"
                  [p100host]="100 4 host" [p100path]="100 4 path")
ALL_ROWS=(b4 b64 b1000 p100host p100path)
ROWS=()
IFS=, read -ra want <<<"$ROWLIST"
for w in "${want[@]}"; do
  [[ -n ${SHAPE[$w]:-} ]] || die "--rows: unknown row '$w' (rows: ${ALL_ROWS[*]})"
done
for r in "${ALL_ROWS[@]}"; do
  for w in "${want[@]}"; do [[ $w == "$r" ]] && { ROWS+=("$r"); break; }; done
done
PROXIES=(baton)
((WITH_HAPROXY)) && PROXIES+=(haproxy)

tools=(nginx:nginx wrk:wrk curl:curl taskset:util-linux ps:procps)
((WITH_HAPROXY)) && tools+=(haproxy:haproxy)
need_tools "${tools[@]}"
NGINX=$(find_bin nginx) WRK=$(find_bin wrk) HAPROXY=""
((WITH_HAPROXY)) && HAPROXY=$(find_bin haproxy)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

FIRST_BACKEND=20000 NBACKENDS=1000
declare -A PORT=([baton]=28280 [haproxy]=28283)
ADMIN_PORT=29290
ports=()
for ((i = 0; i < NBACKENDS; i++)); do ports+=($((FIRST_BACKEND + i))); done
ports_free "${ports[@]}" "${PORT[baton]}" "$ADMIN_PORT" "${PORT[haproxy]}"

setup_work scale-bench
mkdir -p "$WORK/backend"
backend_conf "$WORK/backend" 16k "${ports[@]}"
backend_files "$WORK/backend" 1024

# wrk: the BENCH line at the end, and requests cycling over the pools
write_report_lua "$WORK/scale.lua"
cat >>"$WORK/scale.lua" <<'EOF'
local reqs, i = {}, 0
init = function(args)            -- args[0] is the URL
  local mode, n = args[1] or "none", tonumber(args[2] or "1")
  for k = 0, n - 1 do
    if mode == "host" then
      reqs[#reqs + 1] = wrk.format("GET", "/", { Host = "p" .. k .. ".bench" })
    elseif mode == "path" then
      reqs[#reqs + 1] = wrk.format("GET", "/p" .. k .. "/")
    else
      reqs[#reqs + 1] = wrk.format("GET", "/")
    end
  end
end
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
EOF

# configs: pool k's backend j is port FIRST_BACKEND + k*per + j
for row in "${ROWS[@]}"; do
  read -r npools per mode <<<"${SHAPE[$row]}"
  d=$WORK/baton/$row
  mkdir -p "$d"
  {
    cat <<EOF
listen: "$HOST:${PORT[baton]}"
state_file: "off"
admin:
  listen: "$HOST:$ADMIN_PORT"
log:
  access: false
server:
  shutdown_timeout: 2s
pools:
EOF
    for ((k = 0; k < npools; k++)); do
      echo "  - name: p$k"
      case $mode in
        host) echo "    routes: [{host: p$k.bench}]" ;;
        path) echo "    routes: [{path_prefix: /p$k/}]" ;;
      esac
      echo "    backends:"
      for ((j = 0; j < per; j++)); do
        echo "      - {name: b$j, address: \"$HOST:$((FIRST_BACKEND + k * per + j))\", version: v1, weight: 100}"
      done
    done
  } >"$d/baton.yaml"
  ((WITH_HAPROXY)) || continue
  d=$WORK/haproxy/$row
  mkdir -p "$d"
  {
    cat <<EOF
global
    nbthread 1
    maxconn 8192
defaults
    mode http
    option http-keep-alive
    http-reuse always
    balance roundrobin
    default-server check inter 2s
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
frontend bench
    bind $HOST:${PORT[haproxy]}
EOF
    case $mode in
      host) echo "    use_backend %[req.hdr(host),lower,map_str($d/pools.map,p0)]" ;;
      path) echo "    use_backend %[path,map_beg($d/pools.map,p0)]" ;;
    esac
    echo "    default_backend p0"
    for ((k = 0; k < npools; k++)); do
      echo "backend p$k"
      for ((j = 0; j < per; j++)); do
        echo "    server b$j $HOST:$((FIRST_BACKEND + k * per + j))"
      done
    done
  } >"$d/haproxy.cfg"
  for ((k = 0; k < npools; k++)); do
    case $mode in
      host) echo "p$k.bench p$k" ;;
      path) echo "/p$k/ p$k" ;;
    esac
  done >"$d/pools.map"
done

# healthy_count PROXY ROW — backends the proxy considers up
healthy_count() {
  case $1 in
    baton) curl -sS -m 5 "http://$HOST:$ADMIN_PORT/metrics" 2>/dev/null |
             awk '/^baton_backend_healthy\{/ && $NF == 1 { n++ } END { print n + 0 }' ;;
    haproxy) echo "$2" ;;          # checked by requests below
  esac
}

start_proxy() {                      # start_proxy PROXY ROW — sets PROXY_PID
  local p=$1 row=$2 d=$WORK/$1/$2 npools per mode total i
  read -r npools per mode <<<"${SHAPE[$row]}"
  total=$((npools * per))
  ports_free "${PORT[$p]}"
  case $p in
    baton) ports_free "$ADMIN_PORT"
           start_bg "$d" "$PROXY_CPU" env GOMAXPROCS=1 "$BIN" serve -c "$d/baton.yaml" ;;
    haproxy) start_bg "$d" "$PROXY_CPU" "$HAPROXY" -db -f "$d/haproxy.cfg" ;;
  esac
  PROXY_PID=$STARTED_PID
  wait_listen "$p" "${PORT[$p]}" "$PROXY_PID" "$d"
  for ((i = 0; i < 300; i++)); do
    (($(healthy_count "$p" "$total") >= total)) && break
    sleep 0.1
  done
  (($(healthy_count "$p" "$total") >= total)) ||
    die "$p/$row: only $(healthy_count "$p" "$total") of $total backends healthy after 30 s"
  local url="http://$HOST:${PORT[$p]}/" args=()
  case $mode in
    host) args=(-H "Host: p$((npools - 1)).bench") ;;
    path) url+="p$((npools - 1))/" ;;
  esac
  expect_get "$p/$row" "$url" 200 1024 "$d" "${args[@]}"
}

RESULTS=$WORK/results.txt
: >"$RESULTS"
measure() {                          # measure PROXY ROW ROUND
  local p=$1 row=$2 round=$3 d=$WORK/$1/$2 npools per mode
  read -r npools per mode <<<"${SHAPE[$row]}"
  local url="http://$HOST:${PORT[$p]}/"
  WRK_SCRIPT_ARGS=("$mode" "$npools")
  start_proxy "$p" "$row"
  local i0 i1
  i0=$(tree_ticks "$PROXY_PID"); sleep "$IDLE"; i1=$(tree_ticks "$PROXY_PID")
  local idle_us=$(((i1 - i0) * 1000000 / CLK_TCK))
  wrk_plain "$WARMUP" "$d/warmup.$round.txt" "$url" -c"$CONNS" -s "$WORK/scale.lua"
  wrk_measure "$PROXY_PID" "$DURATION" "$d/wrk.$round.txt" "$url" -c"$CONNS" --latency -s "$WORK/scale.lua"
  stop_pid "$PROXY_PID"
  echo "$p $row $round $M_REQ $M_DUR_US $M_P99_US $M_CPU_US $idle_us $IDLE $M_ERR $M_OTHER_US $M_STEAL_US" >>"$RESULTS"
  say "$(printf '  run %d/%d  %-8s %-9s %7d req/s  cpu %6.1f us/req  idle %5.1f %% of a core  p99 %6.2f ms  errors %d  %s' \
    "$round" "$RUNS" "$p" "$row" $((M_REQ * 1000000 / M_DUR_US)) \
    "$(awk -v c="$M_CPU_US" -v n="$M_REQ" 'BEGIN { print c / n }')" \
    "$(awk -v c="$idle_us" -v s="$IDLE" 'BEGIN { print c / s / 10000 }')" \
    "$(awk -v v="$M_P99_US" 'BEGIN { print v / 1000 }')" "$M_ERR" "$(noise_flag "$DURATION")")"
}

LOAD=$(idle_load)
((LOAD <= 10)) || say "warning: other processes already use ${LOAD}% of a core; the figures will be noisy"
say "starting the backend (nginx, 1 worker, CPU $LOAD_CPU, ports $FIRST_BACKEND-$((FIRST_BACKEND + NBACKENDS - 1))) ..."
start_backend "$WORK/backend" "$FIRST_BACKEND"
expect_get backend "http://$HOST:$((FIRST_BACKEND + NBACKENDS - 1))/" 200 1024 "$WORK/backend"
say "proxies: ${PROXIES[*]}; rows: ${ROWS[*]}; $RUNS run(s) × ${DURATION}s (+${IDLE}s idle, ${WARMUP}s warm-up)," \
    "$CONNS connections; about $((${#PROXIES[@]} * ${#ROWS[@]} * RUNS * (IDLE + WARMUP + DURATION + 3))) s"
for ((round = 1; round <= RUNS; round++)); do
  for row in "${ROWS[@]}"; do
    for p in "${PROXIES[@]}"; do measure "$p" "$row" "$round"; done
  done
done

# ---- report ------------------------------------------------------------------
versions="$(version_line), $("$BIN" version 2>/dev/null | head -n 1 || echo "baton ?")"
echo
echo "## CPU per request by number of backends and pools, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "$(nproc) CPUs, kernel $(uname -r); body 1024 B, wrk -t1 -c$CONNS keep-alive (Lua requests); $RUNS run(s) of ${DURATION}s" \
     "per row (+${WARMUP}s warm-up, ${IDLE}s idle), rows interleaved; wrk + nginx backend on CPU $LOAD_CPU, proxy on CPU $PROXY_CPU" \
     "(baton GOMAXPROCS=1$( ((WITH_HAPROXY)) && echo ", HAProxy nbthread 1"))."
echo "Versions: $versions. Load by other processes before the start: ${LOAD}% of a core."
echo "Command: scale.sh --rows $(IFS=,; echo "${ROWS[*]}")$( ((WITH_HAPROXY)) && echo " --haproxy") --runs $RUNS --duration $DURATION --warmup $WARMUP --idle $IDLE --conns $CONNS."
echo
shapes=""
for r in "${ROWS[@]}"; do shapes+="$r:${SHAPE[$r]// /:} "; done
awk -v order="${ROWS[*]}" -v proxies="${PROXIES[*]}" -v shapes="$shapes" -v secs="$DURATION" '
  function median(s,    n, a, i, j, t) {
    n = split(s, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  function spread(s,    n, a, i, lo, hi, m) {
    n = split(s, a, " "); lo = hi = a[1]
    for (i = 2; i <= n; i++) { if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i] }
    m = median(s); return m > 0 ? sprintf("%.0f %%", (hi - lo) / m * 100) : "–"
  }
  {
    p = $1; r = $2; dur = $5 / 1000000
    cpu[p, r] = cpu[p, r] " " $7 / $4
    idle_rate = $8 / $9                       # µs of CPU per s, at rest
    net[p, r] = net[p, r] " " ($7 - idle_rate * dur) / $4
    idle[p, r] = idle[p, r] " " idle_rate / 10000
    rps[p, r] = rps[p, r] " " $4 / dur
    p99[p, r] = p99[p, r] " " $6 / 1000
    if ($10 > 0) failed = failed sprintf(" %s/%s run %d: %d errors;", p, r, $3, $10)
    if ($11 > secs * 100000 || $12 > secs * 50000)
      noisy = noisy sprintf(" %s/%s run %d (others %.0f %%, steal %.0f %%);", p, r, $3, $11 / secs / 10000, $12 / secs / 10000)
  }
  END {
    ns = split(shapes, sh, " ")
    for (i = 1; i <= ns; i++) { split(sh[i], f, ":"); np[f[1]] = f[2]; per[f[1]] = f[3]; how[f[1]] = f[4] }
    print "| proxy | row | pools | backends | routing | CPU µs/req | vs first row | net of idle µs/req | idle CPU % of a core | req/s | p99 ms | CPU/req spread |"
    print "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    npx = split(proxies, px, " "); nr = split(order, rs, " ")
    for (i = 1; i <= npx; i++) {
      p = px[i]; first = ""
      for (j = 1; j <= nr; j++) {
        r = rs[j]
        if (!((p, r) in cpu)) continue
        c = median(cpu[p, r]); if (first == "") first = c
        route = how[r] == "none" ? "default pool" : (how[r] == "host" ? "Host header" : "path prefix")
        printf "| %s | %s | %d | %d | %s | %.1f | %.2f | %.1f | %.1f | %.0f | %.2f | %s |\n", p, r, np[r], np[r] * per[r], route,
          c, c / first, median(net[p, r]), median(idle[p, r]), median(rps[p, r]), median(p99[p, r]), spread(cpu[p, r])
      }
    }
    print ""
    print "Backends: distinct 127.0.0.1 ports of one nginx worker; every pool round-robin, health checks at the proxy'"'"'s"
    print "default for baton (TCP connect every 2 s per backend) and `check inter 2s` for HAProxy. Idle CPU: the proxy at rest"
    print "before the load (health checks, timers); net of idle subtracts that rate over the measured window."
    print "vs first row: CPU/req ÷ the first row'"'"'s of the same proxy. 100-pool rows spread requests evenly over the pools."
    if (proxies ~ /haproxy/) print "HAProxy routes with one use_backend rule and a map (map_str on the Host, map_beg on the path), not 100 ACL rules."
    if (failed != "") print "**Failed requests** (such a row is not a valid measurement):" failed
    if (noisy != "") print "**Noise** (other processes over 10 % of a core, or steal over 5 %):" noisy
  }' "$RESULTS"
