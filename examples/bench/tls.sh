#!/usr/bin/env bash
# tls.sh — what TLS costs per request: baton's HTTPS listener beside HAProxy's
# `bind ... ssl crt`, same certificate, same cipher suite, on this machine.
#
# One nginx backend (1 KiB answers, CPU 0, with wrk); the proxy on CPU 1
# (baton GOMAXPROCS=1, HAProxy nbthread 1), started afresh for every run with
# both a plain and an HTTPS listener. Rows: haproxy/http, haproxy/https,
# baton/http, baton/https, interleaved RUNS times. Each run: warm-up, then
# `wrk -t1 -c64 -dDURATION` (keep-alive, so a handshake per connection only)
# and the proxy's CPU time during it (utime+stime of its process tree, from
# /proc/PID/stat) divided by the requests. TLS cost = HTTPS µs/req − HTTP
# µs/req (median over the rounds of the per-round difference).
#
# Certificate: self-signed ECDSA P-256, made with openssl in the temp dir.
# TLS 1.3 with TLS_AES_128_GCM_SHA256 on both: HAProxy is pinned to it
# (ssl-min-ver TLSv1.3, ciphersuites); baton gets tls.min_version "1.3" (Go
# does not let a program choose TLS 1.3 suites; with AES hardware it picks
# TLS_AES_128_GCM_SHA256). What each one negotiated is checked with
# openssl s_client before the runs and printed under the table.
#
# usage: tls.sh --bin ./baton [options]
#   --bin PATH       baton binary (or env BATON_BIN)
#   --runs N         rounds (default 3)
#   --duration S     seconds measured per run (default 10)
#   --warmup S       seconds of load before each measured run (default 2)
#   --conns N        wrk connections (default 64)
#   --quick          smoke check: --runs 1 --duration 3 --warmup 1
#   --keep           keep the temp dir (configs, certificate, logs)
#   -h, --help       this text
# Ports (127.0.0.1; the script stops if one is taken): backend 21081, baton
# 28180 (HTTPS 28443), haproxy 28183 (HTTPS 28444). Needs nginx, haproxy, wrk,
# openssl, curl, taskset; missing Debian packages are installed with apt-get
# when run as root.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ME=tls.sh
# shellcheck source=lib.sh
. "$HERE/lib.sh"

BIN=${BATON_BIN:-} RUNS=3 DURATION=10 WARMUP=2 CONNS=64
while (($#)); do
  case $1 in
    --bin) BIN=${2:?--bin needs a path}; shift 2 ;;
    --runs) RUNS=${2:?}; shift 2 ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --warmup) WARMUP=${2:?}; shift 2 ;;
    --conns) CONNS=${2:?}; shift 2 ;;
    --quick) RUNS=1 DURATION=3 WARMUP=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage_from_header; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done
for v in RUNS DURATION WARMUP CONNS; do posint "--${v,,}" "${!v}"; done
[[ -n $BIN ]] || die "--bin PATH (or BATON_BIN) is needed"
BIN=$(abs_bin "$BIN")

need_tools nginx:nginx haproxy:haproxy wrk:wrk openssl:openssl curl:curl taskset:util-linux ps:procps
NGINX=$(find_bin nginx) HAPROXY=$(find_bin haproxy) WRK=$(find_bin wrk) OPENSSL=$(find_bin openssl)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

BACKEND_PORT=21081
declare -A PORT=([baton/http]=28180 [baton/https]=28443 [haproxy/http]=28183 [haproxy/https]=28444)
ROWS=(haproxy/http haproxy/https baton/http baton/https)
ports_free "$BACKEND_PORT" "${PORT[@]}"

setup_work tls-bench
BACKEND=$HOST:$BACKEND_PORT
mkdir -p "$WORK/backend" "$WORK/baton" "$WORK/haproxy" "$WORK/tls"
backend_conf "$WORK/backend" 16k "$BACKEND_PORT"
backend_files "$WORK/backend" 1024
write_report_lua "$WORK/report.lua"

say "making a self-signed ECDSA P-256 certificate ..."
"$OPENSSL" req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" >"$WORK/tls/openssl.log" 2>&1 ||
  die "openssl req failed: $(tail -n 5 "$WORK/tls/openssl.log")"
cat "$WORK/tls/cert.pem" "$WORK/tls/key.pem" >"$WORK/tls/haproxy.pem"
chmod 600 "$WORK/tls/key.pem" "$WORK/tls/haproxy.pem"
SUITE=TLS_AES_128_GCM_SHA256

cat >"$WORK/baton/baton.yaml" <<EOF
listen: "$HOST:${PORT[baton/http]}"
state_file: "off"
admin:
  listen: "off"
log:
  access: false
server:
  shutdown_timeout: 2s
tls:
  listen: "$HOST:${PORT[baton/https]}"
  certificates:
    - cert: "$WORK/tls/cert.pem"
      key: "$WORK/tls/key.pem"
  min_version: "1.3"
pools:
  - name: web
    backends:
      - name: b1
        address: "$BACKEND"
        version: v1
        weight: 100
EOF
cat >"$WORK/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-bind-ciphersuites $SUITE
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
frontend bench
    bind $HOST:${PORT[haproxy/http]}
    bind $HOST:${PORT[haproxy/https]} ssl crt $WORK/tls/haproxy.pem alpn http/1.1
    default_backend web
backend web
    server b1 $BACKEND
EOF

start_proxy() {                      # start_proxy baton|haproxy — sets PROXY_PID
  local p=$1 d=$WORK/$1
  ports_free "${PORT[$p/http]}" "${PORT[$p/https]}"
  case $p in
    baton) start_bg "$d" "$PROXY_CPU" env GOMAXPROCS=1 "$BIN" serve -c "$d/baton.yaml" ;;
    haproxy) start_bg "$d" "$PROXY_CPU" "$HAPROXY" -db -f "$d/haproxy.cfg" ;;
  esac
  PROXY_PID=$STARTED_PID
  wait_listen "$p" "${PORT[$p/http]}" "$PROXY_PID" "$d"
  wait_listen "$p" "${PORT[$p/https]}" "$PROXY_PID" "$d"
  expect_get "$p" "http://$HOST:${PORT[$p/http]}/" 200 1024 "$d"
  expect_get "$p" "https://$HOST:${PORT[$p/https]}/" 200 1024 "$d" -k
}

# what a client like wrk (OpenSSL, default settings) negotiates
negotiated() {                       # negotiated PORT — "TLSv1.3 TLS_AES_128_GCM_SHA256 X25519"
  local out
  out=$("$OPENSSL" s_client -connect "$HOST:$1" -servername localhost -brief </dev/null 2>&1) || true
  awk -F': *' '/^Protocol version/ {v = $2} /^Ciphersuite/ {c = $2}
               /^(Server|Peer) Temp Key/ {split($2, k, ","); g = k[1]}
               END { printf "%s %s %s\n", (v == "" ? "?" : v), (c == "" ? "?" : c), (g == "" ? "?" : g) }' <<<"$out"
}

LOAD=$(idle_load)
((LOAD <= 10)) || say "warning: other processes already use ${LOAD}% of a core; the figures will be noisy"
say "starting the backend (nginx, 1 worker, CPU $LOAD_CPU, 1 KiB body) ..."
start_backend "$WORK/backend" "$BACKEND_PORT"
expect_get backend "http://$BACKEND/" 200 1024 "$WORK/backend"

declare -A NEG=()
for p in haproxy baton; do
  start_proxy "$p"
  NEG[$p]=$(negotiated "${PORT[$p/https]}")
  stop_pid "$PROXY_PID"
  say "  $p negotiates: ${NEG[$p]}"
  [[ ${NEG[$p]} == "TLSv1.3 $SUITE "* ]] ||
    say "warning: $p did not negotiate TLSv1.3 $SUITE (${NEG[$p]}); its row is not comparable"
done

RESULTS=$WORK/results.txt
: >"$RESULTS"
measure() {                          # measure ROW ROUND
  local row=$1 round=$2 p=${1%/*} scheme=${1#*/}
  local url="$scheme://$HOST:${PORT[$row]}/" out="$WORK/$p/wrk.$scheme.$round.txt"
  start_proxy "$p"
  wrk_plain "$WARMUP" "$WORK/$p/warmup.$scheme.$round.txt" "$url" -c"$CONNS"
  wrk_measure "$PROXY_PID" "$DURATION" "$out" "$url" -c"$CONNS" --latency -s "$WORK/report.lua"
  stop_pid "$PROXY_PID"
  echo "$p $scheme $round $M_REQ $M_DUR_US $M_P99_US $M_CPU_US $M_ERR $M_OTHER_US $M_STEAL_US" >>"$RESULTS"
  say "$(printf '  run %d/%d  %-14s %7d req/s  cpu %6.1f us/req  p99 %6.2f ms  errors %d  %s' \
    "$round" "$RUNS" "$row" $((M_REQ * 1000000 / M_DUR_US)) \
    "$(awk -v c="$M_CPU_US" -v n="$M_REQ" 'BEGIN { print c / n }')" \
    "$(awk -v v="$M_P99_US" 'BEGIN { print v / 1000 }')" "$M_ERR" "$(noise_flag "$DURATION")")"
}

say "rows: ${ROWS[*]}; $RUNS run(s) × ${DURATION}s (+${WARMUP}s warm-up), $CONNS connections;" \
    "about $((${#ROWS[@]} * RUNS * (WARMUP + DURATION + 2))) s"
for ((round = 1; round <= RUNS; round++)); do
  for row in "${ROWS[@]}"; do measure "$row" "$round"; done
done

# ---- report ------------------------------------------------------------------
echo
echo "## TLS cost per request, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "$(nproc) CPUs, kernel $(uname -r); body 1024 B, wrk -t1 -c$CONNS keep-alive; $RUNS run(s) of ${DURATION}s per row" \
     "(+${WARMUP}s warm-up), rows interleaved; wrk + nginx backend on CPU $LOAD_CPU, proxy on CPU $PROXY_CPU" \
     "(baton GOMAXPROCS=1, HAProxy nbthread 1)."
echo "Versions: $(version_line), $("$BIN" version 2>/dev/null | head -n 1 || echo "baton ?"), $("$OPENSSL" version | awk '{print $1, $2}')." \
     "Load by other processes before the start: ${LOAD}% of a core."
echo "Command: tls.sh --runs $RUNS --duration $DURATION --warmup $WARMUP --conns $CONNS."
echo
awk -v runs="$RUNS" -v secs="$DURATION" -v neg_b="${NEG[baton]}" -v neg_h="${NEG[haproxy]}" '
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
    p = $1; s = $2; r = $3
    cpu[p, s, r] = $7 / $4
    cpus[p, s] = cpus[p, s] " " $7 / $4
    rps[p, s] = rps[p, s] " " $4 * 1000000 / $5
    p99[p, s] = p99[p, s] " " $6 / 1000
    if ($8 > 0) failed = failed sprintf(" %s/%s run %d: %d errors;", p, s, r, $8)
    if ($9 > secs * 100000 || $10 > secs * 50000)
      noisy = noisy sprintf(" %s/%s run %d (others %.0f %%, steal %.0f %%);", p, s, r, $9 / secs / 10000, $10 / secs / 10000)
  }
  END {
    print "| proxy | HTTP CPU µs/req | HTTPS CPU µs/req | TLS cost µs/req | HTTPS ÷ HTTP | HTTP req/s | HTTPS req/s | HTTPS p99 ms | CPU/req spread http / https |"
    print "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    np = split("haproxy baton", ps, " ")
    for (i = 1; i <= np; i++) {
      p = ps[i]; d = ""
      for (r = 1; r <= runs; r++) if (((p, "http", r) in cpu) && ((p, "https", r) in cpu)) d = d " " cpu[p, "https", r] - cpu[p, "http", r]
      cost[p] = median(d)
      h = median(cpus[p, "http"]); t = median(cpus[p, "https"])
      printf "| %s | %.1f | %.1f | %.1f | %.2f | %.0f | %.0f | %.2f | %s / %s |\n", p, h, t, cost[p], t / h,
        median(rps[p, "http"]), median(rps[p, "https"]), median(p99[p, "https"]), spread(cpus[p, "http"]), spread(cpus[p, "https"])
      med[p] = t; medh[p] = h
    }
    print ""
    printf "Negotiated (openssl s_client, default client settings, like wrk): haproxy %s; baton %s.\n", neg_h, neg_b
    print "HAProxy is pinned to TLSv1.3 and TLS_AES_128_GCM_SHA256; baton to TLS 1.3 (min_version \"1.3\"), its suite chosen by Go."
    print "TLS cost: median over the rounds of (HTTPS − HTTP) CPU µs/req, so it may differ from the difference of the medians."
    if (failed != "") print "**Failed requests** (such a row is not a valid measurement):" failed
    if (noisy != "") print "**Noise** (other processes over 10 % of a core, or steal over 5 %):" noisy
    print ""
    printf "baton: tls_cost_us_per_req=%.1f haproxy=%.1f ratio=%.2f https_cpu_us_per_req=%.1f haproxy=%.1f ratio=%.2f\n",
      cost["baton"], cost["haproxy"], (cost["haproxy"] > 0 ? cost["baton"] / cost["haproxy"] : 0),
      med["baton"], med["haproxy"], med["baton"] / med["haproxy"]
  }' "$RESULTS"
