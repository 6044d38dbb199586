#!/usr/bin/env bash
# Mesh DNS against NSD and CoreDNS (`file` plugin), same records, same
# machine, same run: each server pinned to core 1, dnsperf on core 0; and
# Strait again while 1,000 health changes per second stream in. Needs
# Debian's nsd and dnsperf (`apt-get install nsd dnsperf`) and CoreDNS
# (`go install github.com/coredns/coredns@v1.15.0`; skipped if absent).
# Usage: bench/dns.sh [services] [instances-per-service] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
SERVICES=${1:-10000}; PER=${2:-10}; SECS=${3:-10}
work=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
go build -o "$work/strait" ./cmd/strait
go build -o "$work/catalogload" ./bench/catalogload
export STRAIT_DEV_CONTEXT="$work/ctx.json"

# A dev site on core 0 holds the catalog; `strait dns` on core 1 serves it.
taskset -c 0 "$work/strait" server --dev --bind-addr 127.0.0.1:7490 --metrics-addr 127.0.0.1:9490 --dns-addr "" >"$work/server.out" 2>"$work/server.err" & pids+=($!)
for _ in $(seq 50); do [ -s "$STRAIT_DEV_CONTEXT" ] && break; sleep 0.1; done
eval "$(python3 -c "import json;d=json.load(open('$STRAIT_DEV_CONTEXT'));print('export STRAIT_ADDR=%s STRAIT_TOKEN=%s' % (d['addr'], d['token']));open('$work/ca.pem','w').write(d['ca_pem'])")"
export STRAIT_CA_FILE="$work/ca.pem"
"$work/catalogload" -services "$SERVICES" -instances "$PER"
taskset -c 1 "$work/strait" dns --listen 127.0.0.1:8690 >"$work/dns.out" 2>"$work/dns.err" & pids+=($!)

# The same names and addresses as an NSD zone.
python3 - "$SERVICES" "$PER" "$work" <<'PY'
import sys
n, per, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with open(f"{work}/mesh.zone", "w") as z, open(f"{work}/queries.txt", "w") as q:
    z.write("$TTL 5\n@ IN SOA ns.mesh. hostmaster.mesh. 1 3600 600 86400 5\n@ IN NS ns.mesh.\nns IN A 127.0.0.1\n")
    for s in range(n):
        for i in range(per):
            k = s * per + i
            z.write(f"svc-{s}.bench.dev IN A 10.{(k>>16)&255}.{(k>>8)&255}.{k&255}\n")
    import random
    random.seed(1)
    for _ in range(200000):
        q.write(f"svc-{random.randrange(n)}.bench.dev.mesh A\n")
PY
cat >"$work/nsd.conf" <<NSD
server:
  ip-address: 127.0.0.1@8691
  server-count: 1
  username: ""
  zonesdir: "$work"
  pidfile: "$work/nsd.pid"
  xfrdfile: "$work/xfrd.state"
  zonelistfile: "$work/zone.list"
  database: ""
  rrl-ratelimit: 0
  verbosity: 0
remote-control:
  control-enable: no
zone:
  name: mesh.
  zonefile: mesh.zone
NSD
taskset -c 1 nsd -d -c "$work/nsd.conf" >"$work/nsd.out" 2>&1 & pids+=($!)
targets="strait:8690 nsd:8691"
coredns=$(command -v coredns || ls "$(go env GOPATH)/bin/coredns" 2>/dev/null || true)
if [ -n "$coredns" ]; then
  printf 'mesh.:8692 {\n  bind 127.0.0.1\n  file %s/mesh.zone\n}\n' "$work" >"$work/Corefile"
  GOMAXPROCS=1 taskset -c 1 "$coredns" -conf "$work/Corefile" -quiet >"$work/coredns.out" 2>&1 & pids+=($!)
  targets="$targets coredns:8692"
else
  echo "coredns not found: skipping it (go install github.com/coredns/coredns@v1.15.0)" >&2
fi

# Wait until both answer.
for port in $(for t in $targets; do echo "${t#*:}"; done); do
  for _ in $(seq 100); do
    dig @127.0.0.1 -p $port +short +time=1 +tries=1 svc-1.bench.dev.mesh | grep -q . && break; sleep 0.2
  done
done
run() { taskset -c 0 dnsperf -s 127.0.0.1 -p "$1" -d "$work/queries.txt" -l "$SECS" -c 8 -q 256 2>&1; }
report() {
  qps=$(echo "$2" | awk '/Queries per second/{print $4}')
  lat=$(echo "$2" | awk '/Average Latency/{print $4}')
  lost=$(echo "$2" | awk '/Queries lost/{print $3}')
  echo "round=$round server=$1 qps=$qps avg_latency_s=$lat lost=$lost"
}
for round in 1 2 3; do
  for target in $targets; do
    report "${target%%:*}" "$(run "${target#*:}")"
  done
  # Strait again while the catalog changes 1,000 times a second.
  taskset -c 0 "$work/catalogload" -services "$SERVICES" -instances "$PER" -load=false -churn 1000 -duration "$((SECS + 2))s" 2>"$work/churn.err" &
  churn=$!; sleep 1
  report strait+churn "$(run 8690)"
  wait $churn; cat "$work/churn.err" >&2
done
