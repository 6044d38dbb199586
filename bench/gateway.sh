#!/usr/bin/env bash
# Strait's data path against a site-to-site VPN, between two network
# namespaces joined by a veth pair (one site each), in the same run:
#   direct    the veth itself
#   wireguard wireguard-go (userspace WireGuard) between the namespaces
#   mtls      the per-connection mTLS design (bench/mtlsrelay): a relay in
#             A opens a new mTLS connection, full handshake, to a relay in B
#             for every client connection
#   strait    A's gateway (egress on the virtual IP) -> B's gateway -> service
# Measures iperf3 throughput (1 and 8 streams) and, with bench/tcpprobe,
# the round trip of a 1-byte request (p50/p99) and new connections per
# second. Needs root, iperf3 and wireguard-tools (Debian), and wireguard-go
# (go install golang.zx2c4.com/wireguard@latest).
# Usage: bench/gateway.sh [seconds-per-iperf3-run] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/gateway.sh needs root (network namespaces)" >&2; exit 1; }
SECS=${1:-10}; ROUNDS=${2:-3}
WG=$(command -v wireguard-go || command -v wireguard || echo "$(go env GOPATH)/bin/wireguard")
[ -x "$WG" ] || { echo "wireguard-go not found: go install golang.zx2c4.com/wireguard@latest" >&2; exit 1; }
command -v iperf3 >/dev/null && command -v wg >/dev/null || { echo "apt-get install iperf3 wireguard-tools" >&2; exit 1; }

work=$(mktemp -d); pids=()
NSA=strait-bench-a; NSB=strait-bench-b
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del $NSA 2>/dev/null || true; ip netns del $NSB 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
go build -o "$work/strait" ./cmd/strait
go build -o "$work/tcpprobe" ./bench/tcpprobe
go build -o "$work/mtlsrelay" ./bench/mtlsrelay
A="ip netns exec $NSA"; B="ip netns exec $NSB"

# Two hosts: one namespace per site, a veth between them.
ip netns add $NSA; ip netns add $NSB
ip link add va netns $NSA type veth peer name vb netns $NSB
ip -n $NSA addr add 10.99.0.1/24 dev va; ip -n $NSB addr add 10.99.0.2/24 dev vb
# A new namespace reuses TIME_WAIT ports for loopback only (tcp_tw_reuse=2):
# with thousands of connections a second to one address, connect() then
# spends its time searching for a free port (75% of the CPU, perf), which
# capped every path near 5,200/s. Reuse them on the veth too.
for ns in $NSA $NSB; do
  ip -n $ns link set lo up
  ip netns exec $ns sysctl -q -w net.ipv4.tcp_tw_reuse=1
done
ip -n $NSA link set va up; ip -n $NSB link set vb up

# The services, in B: iperf3 and an echo server.
$B iperf3 -s -p 5201 >"$work/iperf3.log" 2>&1 & pids+=($!)
$B "$work/tcpprobe" -serve 0.0.0.0:7000 & pids+=($!)

# The VPN: wireguard-go in each namespace, tunnel addresses 10.98.0.x.
# (Interface names differ: wg(8) finds a daemon by a socket under
# /var/run/wireguard, which the namespaces share.)
(umask 077; wg genkey >"$work/a.key"; wg genkey >"$work/b.key")
for side in a b; do
  ns=$NSA; [ $side = b ] && ns=$NSB
  ip netns exec $ns "$WG" -f wg$side >"$work/wg-$side.log" 2>&1 & pids+=($!)
done
for _ in $(seq 50); do ip -n $NSA link show wga >/dev/null 2>&1 && ip -n $NSB link show wgb >/dev/null 2>&1 && break; sleep 0.1; done
$A wg set wga listen-port 51820 private-key "$work/a.key" peer "$(wg pubkey <"$work/b.key")" allowed-ips 10.98.0.2/32 endpoint 10.99.0.2:51820
$B wg set wgb listen-port 51820 private-key "$work/b.key" peer "$(wg pubkey <"$work/a.key")" allowed-ips 10.98.0.1/32 endpoint 10.99.0.1:51820
ip -n $NSA addr add 10.98.0.1/24 dev wga; ip -n $NSB addr add 10.98.0.2/24 dev wgb
ip -n $NSA link set wga up; ip -n $NSB link set wgb up

# The per-connection mTLS design: relays for iperf3 (7101 -> 7444) and the
# echo server (7100 -> 7443).
"$work/mtlsrelay" -gen "$work/mtls"
$B "$work/mtlsrelay" -ingress "$work/mtls/ingress" -listen 10.99.0.2:7443 -to 10.99.0.2:7000 2>"$work/mtls-b.log" & pids+=($!)
$B "$work/mtlsrelay" -ingress "$work/mtls/ingress" -listen 10.99.0.2:7444 -to 10.99.0.2:5201 2>>"$work/mtls-b.log" & pids+=($!)
$A "$work/mtlsrelay" -egress "$work/mtls/egress" -listen 10.99.0.1:7100 -to 10.99.0.2:7443 2>"$work/mtls-a.log" & pids+=($!)
$A "$work/mtlsrelay" -egress "$work/mtls/egress" -listen 10.99.0.1:7101 -to 10.99.0.2:7444 2>>"$work/mtls-a.log" & pids+=($!)

# Strait: a dev server and a gateway in each namespace, federated.
for side in a b; do
  ns=$NSA; ip=10.99.0.1; site=site-a
  [ $side = b ] && { ns=$NSB; ip=10.99.0.2; site=site-b; }
  ip netns exec $ns env STRAIT_DEV_CONTEXT="$work/$side.json" "$work/strait" server --dev --site $site \
    --bind-addr $ip:7400 --bundle-addr $ip:7401 >"$work/server-$side.log" 2>&1 & pids+=($!)
done
for side in a b; do for _ in $(seq 100); do [ -s "$work/$side.json" ] && break; sleep 0.1; done; done
CA="$A env STRAIT_DEV_CONTEXT=$work/a.json $work/strait"
CB="$B env STRAIT_DEV_CONTEXT=$work/b.json $work/strait"
for side in a b; do
  ns=$NSA; ip=10.99.0.1; cli=$CA
  [ $side = b ] && { ns=$NSB; ip=10.99.0.2; cli=$CB; }
  tok=$($cli token create --kind gateway | awk '/^Secret:/{print $2}')
  STRAIT_JOIN_TOKEN="$tok" ip netns exec $ns "$work/strait" gateway --name gw-$side --server $ip:7400 --data-dir "$work/gw-$side" \
    --wan-addr $ip:8443 --log-level warn >"$work/gw-$side.log" 2>&1 & pids+=($!)
done
$CB federation join "$($CA federation token 2>/dev/null)" >/dev/null
$CB service register --ns bench --name iperf --port tcp=5201/tcp --address 10.99.0.2 --id iperf-1 >/dev/null
$CB service register --ns bench --name echo --port tcp=7000/tcp --address 10.99.0.2 --id echo-1 >/dev/null
for svc in iperf echo; do $CB export --ns bench --svc $svc --to site-a >/dev/null; done
$CB intention allow --from site-a --to 'bench/*' >/dev/null
vip() { $CA service show --ns bench --name "$1" --peer site-b --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["service"].get("virtual_ip",""))' 2>/dev/null || true; }
for _ in $(seq 150); do
  VIPI=$(vip iperf); VIPE=$(vip echo)
  [ -n "$VIPI" ] && [ -n "$VIPE" ] && $A "$work/tcpprobe" -addr "$VIPE:7000" -rtt 10 -conns 100ms >/dev/null 2>&1 && break
  sleep 0.2
done
[ -n "${VIPE:-}" ] || { echo "Strait path not ready:" >&2; for f in "$work"/*.log; do echo "== $f" >&2; tail -n 5 "$f" >&2; done; exit 1; }

for _ in $(seq 50); do $A "$work/tcpprobe" -addr 10.99.0.1:7100 -rtt 10 -conns 100ms >/dev/null 2>&1 && break; sleep 0.1; done

iperf() { # host port streams -> Gbit/s
  $A iperf3 -c "$1" -p "$2" -t "$SECS" -P "$3" -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}
for round in $(seq "$ROUNDS"); do
  for path in direct:10.99.0.2:5201:10.99.0.2:7000 wireguard:10.98.0.2:5201:10.98.0.2:7000 \
      mtls:10.99.0.1:7101:10.99.0.1:7100 strait:$VIPI:5201:$VIPE:7000; do
    IFS=: read -r name ihost iport ehost eport <<<"$path"
    one=$(iperf "$ihost" "$iport" 1); eight=$(iperf "$ihost" "$iport" 8)
    probe=$($A "$work/tcpprobe" -addr "$ehost:$eport" -rtt 5000 -conns 3s)
    echo "round=$round path=$name gbps_1=$one gbps_8=$eight $probe"
  done
done
