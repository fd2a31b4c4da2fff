# lib.sh — shared by rss.sh, tls.sh and scale.sh beside it (sourced, not run).
#
# Everything listens on 127.0.0.1 only. Processes are started with start_bg
# and stopped by PID only (stop_pid, and the EXIT trap for what is left); the
# temp dir is removed on exit unless KEEP=1. Load goes on CPU 0 (wrk, the
# nginx backend, clients), the proxy under test on CPU 1.
# shellcheck shell=bash

export LC_ALL=C
HOST=127.0.0.1
LOAD_CPU=0
PROXY_CPU=1
ME=${ME:-$(basename "$0")}

die() { echo "$ME: $*" >&2; exit 1; }
say() { echo "$*" >&2; }
usage_from_header() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
posint() { [[ $2 =~ ^[0-9]+$ && $2 -gt 0 ]] || die "$1 must be a positive integer, got '$2'"; }

find_bin() { command -v "$1" 2>/dev/null || { [[ -x /usr/sbin/$1 ]] && echo "/usr/sbin/$1"; } || true; }

# need_tools BIN:PACKAGE... — apt-get installs what is missing (as root, once,
# quietly, without starting the packages' services).
need_tools() {
  local -a missing=()
  local item
  for item in "$@"; do
    [[ -n $(find_bin "${item%%:*}") ]] || missing+=("${item#*:}")
  done
  ((${#missing[@]})) || return 0
  [[ $EUID -eq 0 ]] || die "missing packages: ${missing[*]} (run as root, or apt-get install them)"
  say "installing ${missing[*]} (apt-get, quietly) ..."
  local made_policy=0 rc=0 log
  log=$(mktemp "${TMPDIR:-/tmp}/bench-apt.XXXXXX")
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then  # exit 101: services stay stopped
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  } >"$log" 2>&1 || rc=$?
  ((made_policy)) && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || die "apt-get failed (see $log)"
  rm -f "$log"
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    local pkg
    for pkg in "${missing[@]}"; do
      case $pkg in nginx|haproxy) systemctl disable --now "$pkg" >/dev/null 2>&1 || true ;; esac
    done
  fi
}

# abs_bin PATH — the absolute path of an executable (--bin)
abs_bin() {
  local b=$1
  if [[ $b == */* ]]; then b=$(cd "$(dirname "$b")" && pwd)/$(basename "$b")
  else b=$(command -v "$b") || die "--bin: $1 not found"; fi
  [[ -f $b && -x $b ]] || die "--bin: $b is not an executable file"
  echo "$b"
}

# ---- processes ----------------------------------------------------------------
PIDS=()
WORK=""
KEEP=${KEEP:-0}

alive() {                            # running and not a zombie
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  [[ ${s:0:1} != Z ]]
}
stop_pid() {                         # TERM, up to 5 s, then KILL
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.05; done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
  if [[ -n $WORK && -d $WORK ]]; then
    if ((KEEP)); then say "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
# setup_work NAME — the temp dir ($WORK) and the traps that clean up
setup_work() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  chmod 755 "$WORK"                  # nginx workers run as nobody
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# start_bg DIR CPU CMD... — run CMD in DIR pinned to CPU, output to DIR/out.log;
# sets STARTED_PID
start_bg() {
  local dir=$1 cpu=$2; shift 2
  (cd "$dir" && exec taskset -c "$cpu" "$@") >>"$dir/out.log" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

# ---- ports --------------------------------------------------------------------
listening() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# ports_free PORT... — die if any of them has a listener (any address) or
# answers on 127.0.0.1
ports_free() {
  local -A taken=()
  local p line
  if command -v ss >/dev/null; then
    while read -r line; do
      p=${line##*:}
      [[ $p =~ ^[0-9]+$ ]] && taken[$p]=1
    done < <(ss -Hltn 2>/dev/null | awk '{print $4}')
    for p in "$@"; do
      [[ -z ${taken[$p]:-} ]] || die "port $p is already in use: stop whatever listens there"
    done
  else
    for p in "$@"; do ! listening "$p" || die "port $p is already in use on $HOST"; done
  fi
}

# wait_listen NAME PORT PID DIR — listening within 20 s, or die with its log
wait_listen() {
  local name=$1 port=$2 pid=$3 dir=$4 i
  for ((i = 0; i < 200; i++)); do
    alive "$pid" || die "$name exited at start; its log:
$(tail -n 20 "$dir/out.log" "$dir/error.log" 2>/dev/null)"
    listening "$port" && return 0
    sleep 0.1
  done
  die "$name is not listening on $HOST:$port after 20 s; its log:
$(tail -n 20 "$dir/out.log" "$dir/error.log" 2>/dev/null)"
}

# expect_get NAME URL CODE SIZE DIR [curl args] — one GET answers CODE with
# SIZE bytes (retried for up to 10 s: a proxy may still be checking backends)
expect_get() {
  local name=$1 url=$2 code=$3 size=$4 dir=$5 i got=""; shift 5
  for ((i = 0; i < 50; i++)); do
    got=$(curl -sS -m 5 -o /dev/null -w '%{http_code} %{size_download}' "$@" "$url" 2>&1) || true
    [[ $got == "$code $size" ]] && return 0
    sleep 0.2
  done
  die "$name: GET $url answered '$got', expected '$code $size'; its log:
$(tail -n 20 "$dir/out.log" "$dir/error.log" 2>/dev/null)"
}

# ---- /proc --------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
descendants() {
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null || true); do echo "$c"; descendants "$c"; done
}
# CPU ticks (utime+stime+cutime+cstime) of PID and its descendants
tree_ticks() {
  local total=0 p s f
  for p in "$1" $(descendants "$1"); do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    s=${s##*) }
    read -ra f <<<"$s"
    total=$((total + f[11] + f[12] + f[13] + f[14]))
  done
  echo "$total"
}
# tree_kb FIELD PID — sum of /proc/*/status FIELD (VmRSS, VmHWM) in KiB over
# PID and its descendants
tree_kb() {
  local total=0 p kb
  for p in "$2" $(descendants "$2"); do
    kb=$(awk -v f="$1:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null || true)
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}
# "busy steal children": ticks of all CPUs busy and stolen (/proc/stat), and
# the CPU time of this shell's finished children (wrk)
machine_ticks() {
  local s f
  s=$(cat "/proc/$$/stat")
  s=${s##*) }
  read -ra f <<<"$s"
  awk -v c=$((f[13] + f[14])) '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $9, c; exit }' /proc/stat
}
# idle_load — % of a core other processes use now (1 s sample)
idle_load() {
  local b0 b1
  read -r b0 _ <<<"$(machine_ticks)"
  sleep 1
  read -r b1 _ <<<"$(machine_ticks)"
  echo $(((b1 - b0) * 100 / CLK_TCK))
}

render() {                           # render TEMPLATE OUT KEY=VALUE...
  local tmpl=$1 out=$2; shift 2
  local args=() kv
  for kv in "$@"; do args+=(-e "s|{{${kv%%=*}}}|${kv#*=}|g"); done
  sed "${args[@]}" "$tmpl" >"$out"
  ! grep -q '{{[A-Z_]*}}' "$out" || die "unfilled placeholder in $out"
}

# ---- the nginx backend --------------------------------------------------------
# backend_conf DIR RATE PORT... — DIR/nginx.conf for one nginx worker
# listening on every PORT of 127.0.0.1: any path answers 200 with www/body;
# /big is www/big (a sparse 1 GiB file) at full speed, /slow the same limited
# to RATE (nginx limit_rate syntax, e.g. 16k) per connection.
backend_conf() {
  local dir=$1 rate=$2 p; shift 2
  mkdir -p "$dir/tmp" "$dir/www"
  {
    cat <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    open_file_cache max=16 inactive=600s;
    open_file_cache_valid 600s;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server {
EOF
    for p in "$@"; do echo "        listen $HOST:$p backlog=4096;"; done
    cat <<EOF
        root $dir/www;
        location / { try_files /body =404; }
        location = /big { try_files /big =404; }
        location = /slow { limit_rate $rate; try_files /big =404; }
    }
}
EOF
  } >"$dir/nginx.conf"
}
# backend_files DIR BODY_BYTES — www/body, and www/big (sparse, no disk used)
backend_files() {
  head -c "$2" /dev/zero | tr '\0' x >"$1/www/body"
  truncate -s 1G "$1/www/big"
  chmod -R a+rX "$1/www"
}
# start_backend DIR PORT... — nginx on CPU 0; sets BACKEND_PID
start_backend() {
  local dir=$1 port=$2
  start_bg "$dir" "$LOAD_CPU" "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log"
  BACKEND_PID=$STARTED_PID
  wait_listen backend "$port" "$BACKEND_PID" "$dir"
}

# ---- wrk ----------------------------------------------------------------------
# write_report_lua FILE — wrk prints one machine-readable BENCH line at the end
write_report_lua() {
  cat >"$1" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
EOF
}

# WRK_SCRIPT_ARGS: arguments for the Lua script's init(args), put after the URL
WRK_SCRIPT_ARGS=()
# wrk_measure PID SECONDS OUT URL [wrk args] — wrk on CPU 0 for SECONDS; sets
# M_REQ M_DUR_US M_P50_US M_P99_US M_ERR (wrk), M_CPU_US (PID's tree during
# the run), M_OTHER_US and M_STEAL_US (CPU time of anything but PID, the
# backend and wrk; hypervisor steal). The script passed with -s must print
# the BENCH line (see write_report_lua).
wrk_measure() {
  local pid=$1 secs=$2 out=$3 url=$4; shift 4
  local p0 p1 b0 b1 s0 s1
  p0=$(tree_ticks "$pid"); b0=$(tree_ticks "$BACKEND_PID"); s0=$(machine_ticks)
  taskset -c "$LOAD_CPU" "$WRK" -t1 -d"${secs}s" "$@" "$url" ${WRK_SCRIPT_ARGS[@]+"${WRK_SCRIPT_ARGS[@]}"} >"$out" 2>&1 ||
    die "wrk failed against $url: $(tail -n 5 "$out")"
  s1=$(machine_ticks); p1=$(tree_ticks "$pid"); b1=$(tree_ticks "$BACKEND_PID")
  local line kv
  line=$(grep '^BENCH ' "$out") || die "no BENCH line in wrk's output: $(tail -n 5 "$out")"
  local -A w=()
  for kv in ${line#BENCH }; do w[${kv%%=*}]=${kv#*=}; done
  M_REQ=${w[requests]} M_DUR_US=${w[duration_us]} M_P50_US=${w[p50_us]} M_P99_US=${w[p99_us]}
  M_ERR=$((w[err_connect] + w[err_read] + w[err_write] + w[err_status] + w[err_timeout]))
  ((M_REQ > 0)) || die "wrk completed no request against $url: $(tail -n 5 "$out")"
  M_CPU_US=$(((p1 - p0) * 1000000 / CLK_TCK))
  local busy0 steal0 wrk0 busy1 steal1 wrk1
  read -r busy0 steal0 wrk0 <<<"$s0"
  read -r busy1 steal1 wrk1 <<<"$s1"
  M_OTHER_US=$(((busy1 - busy0 - (p1 - p0) - (b1 - b0) - (wrk1 - wrk0)) * 1000000 / CLK_TCK))
  ((M_OTHER_US > 0)) || M_OTHER_US=0
  M_STEAL_US=$(((steal1 - steal0) * 1000000 / CLK_TCK))
}
# wrk_plain SECONDS OUT URL [wrk args] — load without measuring (warm-up)
wrk_plain() {
  local secs=$1 out=$2 url=$3; shift 3
  taskset -c "$LOAD_CPU" "$WRK" -t1 -d"${secs}s" "$@" "$url" ${WRK_SCRIPT_ARGS[@]+"${WRK_SCRIPT_ARGS[@]}"} >"$out" 2>&1 ||
    die "wrk failed against $url: $(tail -n 5 "$out")"
}

# noise_note SECS — a warning word if other processes or steal exceeded 10 %
# / 5 % of a core during the last wrk_measure
noise_flag() {
  local secs=$1
  if ((M_OTHER_US > secs * 100000 || M_STEAL_US > secs * 50000)); then echo noisy; else echo ok; fi
}

version_line() {                     # versions of the tools used
  local v
  v="$("$NGINX" -v 2>&1 | head -n 1 | sed 's/.*nginx\//nginx /')"
  [[ -n ${HAPROXY:-} ]] && v+=", $("$HAPROXY" -v 2>&1 | head -n 1 | awk '{print "haproxy", $3}')"
  [[ -n ${WRK:-} ]] && v+=", $("$WRK" -v 2>&1 | head -n 1 | awk '{print $1, $2}')"
  echo "$v"
}
