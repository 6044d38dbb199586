#!/usr/bin/env bash
# bench/compare.sh OLD_REV NEW_REV [COUNT]: the before/after comparison of two
# builds in one session (issue 16), as BENCHMARKS.md describes it.
#
# For each revision, in a detached worktree of its own under a temporary
# directory: cmd/strait is built as shipped (-trimpath -ldflags='-s -w') and
# plain, and both sizes are recorded; the controlplane test binary is built
# once. Then COUNT rounds, each running the old build and then the new one
# (so that a slow spell of the machine falls on both):
#   - the gateways' resident memory (bench/hostile rss, built from this
#     checkout so both builds get the same load): two federated dev sites on
#     loopback, one server and one gateway each; VmRSS and VmHWM after 10 s
#     idle, and again 5 s after 2,000 connections through both gateways;
#   - the control plane benchmarks of `make bench`: Register|Memory (1x),
#     Propagation (5x), XDSPush (10x).
# Finally benchstat compares old and new (medians, p-values), and a Markdown
# block for BENCHMARKS.md is written to $COMPARE_OUT (default
# bench/compare-out.md), with the raw results next to it.
#
# Environment:
#   COMPARE_OUT=file   where the Markdown goes (raw files: same name, -old.txt, -new.txt, -benchstat.txt, -rss.txt)
#   QUICK=1            a dry run of the harness: one short benchmark of each group
#                      at 1x and a short RSS load; its figures mean nothing
#   RSS=0              skip the resident-memory runs
#   KEEP=1             keep the temporary directory (worktrees are removed anyway)
#   GO=go              the go command
#
# The machine should be otherwise idle; run from the repository (any branch).
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: bench/compare.sh OLD_REV NEW_REV [COUNT]" >&2
  exit 2
fi
COUNT=${3:-3}
case $COUNT in '' | *[!0-9]* | 0) echo "compare: COUNT must be a positive number, not \"$COUNT\"" >&2; exit 2 ;; esac
GO=${GO:-go}
QUICK=${QUICK:-0}
RSS=${RSS:-1}
KEEP=${KEEP:-0}
# A version the module proxy here serves; benchstat's output format is stable across recent ones.
BENCHSTAT_PKG=golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da

repo=$(cd "$(dirname "$0")/.." && pwd)
OUT=${COMPARE_OUT:-$repo/bench/compare-out.md}
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
old=$(git -C "$repo" rev-parse --short=9 "$1^{commit}")
new=$(git -C "$repo" rev-parse --short=9 "$2^{commit}")

work=$(mktemp -d "${TMPDIR:-/tmp}/strait-compare.XXXXXX")
child=""
cleanup() {
  local rc=$?
  if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
    kill -TERM "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  for side in old new; do
    [ -d "$work/$side" ] && git -C "$repo" worktree remove --force "$work/$side" >/dev/null 2>&1 || true
  done
  git -C "$repo" worktree prune >/dev/null 2>&1 || true
  if [ "$KEEP" = 1 ]; then echo "compare: kept $work" >&2; else rm -rf "$work"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run CMD...: runs a command in the background and waits for it, so that an
# interrupted run stops it by its PID (the strait processes of hostile rss
# die with it: they are started with a parent-death signal).
run() {
  "$@" &
  child=$!
  local rc=0
  wait "$child" || rc=$?
  child=""
  return $rc
}

log() { echo "compare [$(date -u +%H:%M:%S)]: $*" >&2; }
started=$(date +%s)

# The benchmarks `make bench` runs in ./controlplane/ with 'Register|Memory',
# 'Propagation' and 'XDSPush', by name: each build's test binaries are those
# of the packages that declare them, wherever the restructuring put them.
benchfuncs='RegisterThroughput|RegisterLatencyAtRate|Memory100kInstances|Propagation|XDSPush'
if [ "$QUICK" = 1 ]; then
  groups=('^BenchmarkRegisterThroughput$/^servers=1/writers=1$|1x' '^BenchmarkPropagation$/^delay=0s$|1x' '^BenchmarkXDSPush$|1x')
  rssflags=(-idle 2s -calls 200 -settle 1s)
else
  groups=('^Benchmark(RegisterThroughput|RegisterLatencyAtRate|Memory100kInstances)$|1x' '^BenchmarkPropagation$|5x' '^BenchmarkXDSPush$|10x')
  rssflags=(-idle 10s -calls 2000 -settle 5s)
fi

mkdir -p "$work/bin" "$work/res"
log "tools: benchstat and bench/hostile (from $repo)"
GOBIN=$work/bin "$GO" install "$BENCHSTAT_PKG"
(cd "$repo" && "$GO" build -o "$work/bin/hostile" ./bench/hostile)

declare -A size pkgs
for side in old new; do
  rev=$old; [ $side = new ] && rev=$new
  log "$side = $rev: worktree and builds"
  git -C "$repo" worktree add --detach "$work/$side" "$rev" >/dev/null 2>&1
  mkdir -p "$work/bin/$side"
  pkgs[$side]=$( (git -C "$work/$side" grep -l -E "^func Benchmark($benchfuncs)\(" -- '*_test.go' || true) | xargs -r -n1 dirname | sort -u | tr '\n' ' ')
  [ -n "${pkgs[$side]// /}" ] || { echo "compare: $rev declares none of Benchmark{$benchfuncs}" >&2; exit 1; }
  log "$side: benchmarks in ${pkgs[$side]}"
  (
    cd "$work/$side"
    "$GO" build -trimpath -ldflags='-s -w' -o "$work/bin/$side/strait-shipped" ./cmd/strait
    "$GO" build -o "$work/bin/$side/strait" ./cmd/strait
    for d in ${pkgs[$side]}; do
      "$GO" test -c -o "$work/bin/$side/${d//\//_}.test" "./$d"
    done
  )
  size[$side,shipped]=$(stat -c %s "$work/bin/$side/strait-shipped")
  size[$side,plain]=$(stat -c %s "$work/bin/$side/strait")
done

for round in $(seq "$COUNT"); do
  for side in old new; do
    if [ "$RSS" = 1 ]; then
      log "round $round/$COUNT $side: gateway memory"
      if ! run "$work/bin/hostile" rss -strait "$work/bin/$side/strait-shipped" -label $side "${rssflags[@]}" \
        >>"$work/res/rss.txt" 2>>"$work/res/rss-$side.log"; then
        echo "compare: hostile rss failed for $side; its log:" >&2
        tail -n 20 "$work/res/rss-$side.log" >&2
        exit 1
      fi
    fi
    for g in "${groups[@]}"; do
      re=${g%|*}; bt=${g##*|}
      log "round $round/$COUNT $side: -bench '$re' -benchtime $bt"
      : >"$work/res/run.txt"
      for d in ${pkgs[$side]}; do
        # A failed run (a benchmark fails when a Raft election on a busy
        # machine aborts one of its writes) is run again once; the output
        # lists every retry, so that a build that fails more shows.
        for try in 1 2; do
          # In the package directory, as go test runs it (testdata paths).
          cd "$work/$side/$d"
          rc=0
          run "$work/bin/$side/${d//\//_}.test" -test.run '^$' -test.bench "$re" -test.benchtime "$bt" \
            -test.count 1 -test.timeout 30m >"$work/res/try.txt" 2>>"$work/res/$side.err" || rc=$?
          cd "$repo"
          [ $rc = 0 ] && break
          why=$(grep -m1 -E '^\s+\S+_test\.go:[0-9]+: ' "$work/res/try.txt" | sed 's/^[[:space:]]*//' | cut -c1-160 || true)
          echo "round $round, $side, \`$re\` in $d: failed (exit $rc): ${why:-see the log}" >>"$work/res/retries.txt"
          if [ $try = 2 ]; then
            echo "compare: benchmark $re failed twice for $side in $d (exit $rc):" >&2
            tail -n 30 "$work/res/try.txt" "$work/res/$side.err" >&2
            exit 1
          fi
          log "round $round/$COUNT $side: $re failed in $d, running it again"
        done
        cat "$work/res/try.txt" >>"$work/res/run.txt"
      done
      grep -q '^Benchmark' "$work/res/run.txt" || { echo "compare: -bench '$re' ran nothing in $side (${pkgs[$side]})" >&2; exit 1; }
      # Without pkg: lines, so that benchstat pairs a benchmark that moved package with its old self.
      grep -v '^pkg:' "$work/res/run.txt" >>"$work/res/$side.txt"
    done
  done
done

log "benchstat"
(cd "$work/res" && "$work/bin/benchstat" old.txt new.txt >benchstat.txt 2>&1 &&
  "$work/bin/benchstat" -format csv old.txt new.txt >benchstat.csv 2>/dev/null)

took=$(( $(date +%s) - started ))
base=${OUT%.md}
mkdir -p "$(dirname "$OUT")"
cp "$work/res/old.txt" "$base-old.txt"
cp "$work/res/new.txt" "$base-new.txt"
cp "$work/res/benchstat.txt" "$base-benchstat.txt"
[ "$RSS" = 1 ] && cp "$work/res/rss.txt" "$base-rss.txt"

# median of the numbers on stdin
median() { sort -g | awk '{v[NR]=$1} END {if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "n/a" || b == "n/a" || a == 0) print "n/a"; else printf "%.2f×", b/a}'; }

{
  echo "### Before/after: $old → $new ($(date -u +%Y-%m-%d), $COUNT interleaved rounds)"
  echo
  if [ "$QUICK" = 1 ]; then
    echo "**QUICK=1: a dry run of the harness (one short benchmark per group at 1x, a short load); these figures mean nothing.**"
    echo
  fi
  echo "\`bench/compare.sh $old $new $COUNT\` on $(nproc) cores, $($GO version | awk '{print $3}'), in $((took / 60)) min;"
  echo "each round ran the old build, then the new one. Medians of the rounds; p from benchstat (Mann-Whitney U)."
  if [ "$COUNT" -lt 4 ]; then
    echo "With fewer than 4 runs each, p cannot fall below 0.05 (at 3 it is 0.1 at least), so read the ratios against the ±15% noise band."
  fi
  echo
  echo "| binary \`cmd/strait\` | $old | $new | new ÷ old |"
  echo "| --- | --- | --- | --- |"
  for kind in shipped plain; do
    label="-trimpath -ldflags='-s -w'"; [ $kind = plain ] && label="plain \`go build\`"
    a=${size[old,$kind]}; b=${size[new,$kind]}
    printf '| %s | %s B | %s B | %s |\n' "$label" "$a" "$b" "$(ratio "$a" "$b")"
  done
  echo
  if [ "$RSS" = 1 ]; then
    echo "Resident memory (\`hostile rss\` ${rssflags[*]}: two federated dev sites, one server and one gateway each;"
    echo "the load is connections from west to east's echo through both gateways), KiB, medians of $COUNT."
    echo "RSS moves with when the Go runtime last returned memory to the kernel; the heap in use (from /metrics) is steadier:"
    echo
    echo "| process | when | VmRSS $old | VmRSS $new | new ÷ old | VmHWM $old | VmHWM $new | new ÷ old | Go heap in use $old | $new | new ÷ old |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    for p in east-gw west-gw east-server west-server; do
      for m in idle after-load; do
        pick() { grep " label=$1 moment=$m process=$p " "$work/res/rss.txt" | sed -n "s/.* $2=\([0-9]*\)\( .*\)\{0,1\}$/\1/p" | median; }
        ro=$(pick old vmrss_kib); rn=$(pick new vmrss_kib); ho=$(pick old vmhwm_kib); hn=$(pick new vmhwm_kib)
        go=$(pick old heap_inuse_kib); gn=$(pick new heap_inuse_kib)
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$p" "$m" "$ro" "$rn" "$(ratio "$ro" "$rn")" \
          "$ho" "$hn" "$(ratio "$ho" "$hn")" "$go" "$gn" "$(ratio "$go" "$gn")"
      done
    done
    echo
  fi
  echo "Control plane benchmarks (\`controlplane\` test binary of each build):"
  echo
  echo "| benchmark | unit | $old | $new | new ÷ old | p (n) |"
  echo "| --- | --- | --- | --- | --- | --- |"
  # benchstat's CSV: a ",unit,CI,unit,CI,vs base,P" header per unit, then
  # name,old,CI,new,CI,delta,"p=... n=..." rows (old and new are medians).
  awk -F, '
    $1 == "" && $3 == "CI" { unit = $2; next }
    $1 == "" || $1 == "geomean" || NF < 7 { next }
    {
      name = $1; sub(/-[0-9]+$/, "", name)
      r = ($2 + 0 != 0) ? sprintf("%.2f×", $4 / $2) : "n/a"
      p = $7; gsub(/p=/, "", p)
      printf "| %s | %s | %.4g | %.4g | %s | %s |\n", name, unit, $2, $4, r, p
    }' "$work/res/benchstat.csv"
  echo
  if [ -s "$work/res/retries.txt" ]; then
    echo "Runs that failed and were run again (the retry's figures are the ones above):"
    echo
    sed 's/^/- /' "$work/res/retries.txt"
    echo
  fi
  echo "Raw results: \`$(basename "$base")-old.txt\`, \`-new.txt\`, \`-benchstat.txt\`$([ "$RSS" = 1 ] && echo ", \`-rss.txt\`")."
} >"$OUT"
log "done in ${took}s: $OUT"
