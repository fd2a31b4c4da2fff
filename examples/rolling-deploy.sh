#!/usr/bin/env bash
# Rolling deploy with baton: the first server is upgraded and comes back as
# the canary, gets the pool's canary share of live traffic and baton's judge
# compares it with the stable version; then it is promoted and the other
# servers follow one by one, or it is rolled back. When the pool lets the
# judge act (canary.auto_promote, canary.auto_rollback), the script follows
# its decision as soon as it is made. No request fails along the way: each
# server is drained (baton waits until nothing is in flight on it) before it
# is touched, and gets traffic again only once its health check passes.
#
# Usage: rolling-deploy.sh POOL VERSION
#
# Environment:
#   UPGRADE_CMD   command that upgrades one server; {name}, {address} and
#                 {version} are replaced. Default: an echo (try it on
#                 `baton demo`).
#   ROLLBACK_CMD  command that reinstalls the old version on the canary after
#                 a rollback; {version} is the old version. Default: an echo.
#   OBSERVE       longest to watch the canary before deciding (default 60s);
#                 a judge's fail or decision ends the watch early
#   INTERVAL      seconds between printed comparisons while watching (default 10)
#   MIN_REQUESTS  canary requests needed to decide while the judge has no
#                 verdict yet (default 50)
#   MAX_ERROR_RATE_INCREASE  allowed error-rate increase over the stable
#                 version then, as a fraction (default 0.01: one point)
#   DRAIN_WAIT    longest a drain may take (default 120s)
#   HEALTH_WAIT   seconds a server may take to pass its health check (default 60)
#   BATON         the baton binary (default: baton on PATH)
#   BATON_ADMIN, BATON_TOKEN_FILE: where baton's admin API is, as for baton ctl.
#
# Exit status: 0 released everywhere, 1 rolled back or failed (the message
# says what to do), 2 usage.
set -euo pipefail

POOL=${1:-}
VERSION=${2:-}
if [[ -z "$POOL" || -z "$VERSION" ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
fi
BATON=${BATON:-baton}
UPGRADE_CMD=${UPGRADE_CMD:-'echo "  (upgrade {name} at {address} to {version} here)"'}
ROLLBACK_CMD=${ROLLBACK_CMD:-'echo "  (reinstall {version} on {name} at {address} here)"'}
OBSERVE=${OBSERVE:-60s}
INTERVAL=${INTERVAL:-10}
MIN_REQUESTS=${MIN_REQUESTS:-50}
MAX_ERROR_RATE_INCREASE=${MAX_ERROR_RATE_INCREASE:-0.01}
DRAIN_WAIT=${DRAIN_WAIT:-120s}
HEALTH_WAIT=${HEALTH_WAIT:-60}

ctl() { "$BATON" ctl "$@"; }
say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }

# run_cmd TEMPLATE NAME ADDRESS VERSION: the template with its fields filled in.
run_cmd() {
  local cmd=$1
  cmd=${cmd//\{name\}/$2}
  cmd=${cmd//\{address\}/$3}
  cmd=${cmd//\{version\}/$4}
  bash -c "$cmd"
}

# wait_healthy NAME: until baton's health check passes on the server.
wait_healthy() {
  local i
  for ((i = 0; i < HEALTH_WAIT * 5; i++)); do
    if [[ "$(ctl backend "$POOL" "$1" -o 'template={{.healthy}}')" == true ]]; then
      return 0
    fi
    sleep 0.2
  done
  say "$1 did not pass its health check within ${HEALTH_WAIT}s; it stays enabled without traffic."
  say "Fix the server, or take it out with: $BATON ctl drain $POOL $1"
  exit 1
}

# upgrade NAME: drain it, upgrade it, bring it back as VERSION.
upgrade() {
  local name=$1 address
  address=$(ctl backend "$POOL" "$name" -o 'template={{.address}}')
  say "draining $name ($address)"
  ctl drain "$POOL" "$name" --wait "$DRAIN_WAIT"
  say "upgrading $name to $VERSION"
  if ! run_cmd "$UPGRADE_CMD" "$name" "$address" "$VERSION"; then
    say "the upgrade command failed on $name; it stays drained."
    say "Fix it, then: $BATON ctl enable $POOL $name --version $VERSION (or the old version)"
    exit 1
  fi
  ctl enable "$POOL" "$name" --version "$VERSION"
  wait_healthy "$name"
  say "$name is back, running $VERSION"
}

STABLE=$(ctl pool "$POOL" -o 'template={{.stable_version}}')
if [[ "$STABLE" == "$VERSION" ]]; then
  say "$POOL already runs $VERSION as its stable version; nothing to do."
  exit 0
fi
mapfile -t SERVERS < <(ctl pool "$POOL" -o name)
if ((${#SERVERS[@]} == 0)); then
  say "pool $POOL has no servers"
  exit 1
fi
say "releasing $VERSION to pool $POOL (stable: $STABLE; servers: ${SERVERS[*]})"

# 1. The first server becomes the canary.
CANARY=${SERVERS[0]}
upgrade "$CANARY"

# 2. Watch it on live traffic.
case $OBSERVE in
  *m) observe_s=$(( ${OBSERVE%m} * 60 )) ;;
  *s) observe_s=${OBSERVE%s} ;;
  *) observe_s=$OBSERVE ;;
esac
# pool_state: "STABLE CANARY VERDICT" as baton sees the pool now.
pool_state() { ctl pool "$POOL" -o 'template={{.stable_version}} {{with .canary}}{{.version}} {{.verdict}}{{end}}'; }

say "watching canary $CANARY for up to $OBSERVE"
deadline=$(( SECONDS + observe_s ))
while ((SECONDS < deadline)); do
  ctl canary "$POOL" | sed 's/^/    /'
  state=$(pool_state)
  # The judge failed it, or already promoted or rolled it back.
  [[ "$state" == "$STABLE $VERSION "* && "$state" != *" fail" ]] || break
  left=$(( deadline - SECONDS ))
  sleep $(( left < INTERVAL ? (left > 0 ? left : 0) : INTERVAL ))
done
ctl canary "$POOL" | sed 's/^/    /'

# back_to_stable: the rolled-back canary server gets the old version again.
back_to_stable() {
  local address
  address=$(ctl backend "$POOL" "$CANARY" -o 'template={{.address}}')
  ctl drain "$POOL" "$CANARY" --wait "$DRAIN_WAIT"
  run_cmd "$ROLLBACK_CMD" "$CANARY" "$address" "$STABLE"
  ctl enable "$POOL" "$CANARY" --version "$STABLE"
  wait_healthy "$CANARY"
  say "$CANARY runs $STABLE again; $VERSION was not released"
}

# 3. Decide, unless the judge already did.
state=$(pool_state)
if [[ "$state" == "$VERSION "* ]]; then
  say "baton's judge promoted $VERSION"
elif [[ "$state" != "$STABLE $VERSION "* ]]; then
  why=$(ctl canary "$POOL" -o 'template={{with index . "previous"}}{{.reason}}{{end}}')
  say "baton's judge rolled $VERSION back: $why"
  back_to_stable
  exit 1
elif ! why=$(ctl canary "$POOL" --check --min-requests "$MIN_REQUESTS" --max-error-rate-increase "$MAX_ERROR_RATE_INCREASE" 2>&1 >/dev/null); then
  say "rolling back: ${why#baton ctl: }"
  ctl rollback "$POOL"
  back_to_stable
  exit 1
else
  ctl promote "$POOL"
fi

# 4. The rest, one by one.
for name in "${SERVERS[@]:1}"; do
  upgrade "$name"
done
say "$VERSION is released to every server of $POOL"
ctl pool "$POOL"
