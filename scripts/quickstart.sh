#!/usr/bin/env bash
# The README's walkthrough, by hand, as a script: four member identities, a consortium file
# filled with their dids (the example's defaults), the genesis block, the chain verified, one
# byte of a stored blob changed and the fault named by verify-chain; then the four nodes
# started, two members training and submitting by hand (`bcfl train`, `bcfl submit`, default
# options), round 1 closed by a committed aggregate, the model exported and the chain
# verified again. Everything lives in a throwaway directory, .bcfl-demo/quickstart (or
# $BCFL_DEMO_DIR: the test suite runs this script in a temporary directory); the nodes are
# stopped on exit, however it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
BCFL=${BCFL:-.venv/bin/bcfl}
# how long the nodes may take to open round 1, and round 1 to close (bounded waits)
WAIT_S=${BCFL_QUICKSTART_WAIT_S:-180}
DEMO=${BCFL_DEMO_DIR:-.bcfl-demo/quickstart}
rm -rf "$DEMO"
mkdir -p "$DEMO"
# Throwaway keys for a demo: a real member types a passphrase at the hidden prompt instead.
export BCFL_PASSPHRASE="quickstart demo only"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. One identity per member (Ed25519, encrypted at rest with Argon2id)"
members=()
for m in alice bob carol dave; do
  "$BCFL" keygen --name "$m" --home "$DEMO/$m"
  members+=(--member "$m=$DEMO/$m")
done

step "2. The consortium file, filled with the members' dids"
"$BCFL" consortium example "${members[@]}" --out "$DEMO/consortium.toml"

step "3. Genesis: its hash is the consortium's identity; every founder inits at the same time"
"$BCFL" init "$DEMO/consortium.toml" --home "$DEMO/alice"
"$BCFL" log --home "$DEMO/alice"
t=$("$BCFL" inspect 0 --home "$DEMO/alice" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["time"])')
genesis=$("$BCFL" inspect 0 --home "$DEMO/alice" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])')
for m in bob carol dave; do
  "$BCFL" init "$DEMO/consortium.toml" --time-ms "$t" --home "$DEMO/$m" --json >/dev/null
  theirs=$("$BCFL" inspect 0 --home "$DEMO/$m" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])')
  [ "$theirs" = "$genesis" ] || { echo "$m's genesis $theirs differs from alice's $genesis" >&2; exit 1; }
done
echo "all four founders hold genesis $genesis"

step "4. Verify the chain from genesis"
"$BCFL" verify-chain --home "$DEMO/alice"

step "5. Change one byte of the stored initial model; verify-chain must name the fault"
cp -R "$DEMO/alice" "$DEMO/tampered"
blob=$(find "$DEMO/tampered/blobs" -type f -size +10k | head -n 1)
printf 'X' | dd of="$blob" bs=1 seek=200 conv=notrunc status=none
if "$BCFL" verify-chain --home "$DEMO/tampered"; then
  echo "verify-chain missed a changed byte" >&2
  exit 1
fi
echo "the tampered copy was refused (exit 1), the original verifies (exit 0)"

json_field() {  # json_field EXPR: evaluate EXPR on the JSON document read from stdin
  python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"
}

step "6. Start the four nodes (in the background here; a terminal each in real life)"
# four free ports out of the kernel's ephemeral range (where outgoing connections take theirs)
read -r -a ports <<<"$(python3 -c 'import random, socket
ports = []
while len(ports) < 4:
    port = random.randint(20000, 30000)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    if port not in ports:
        ports.append(port)
print(*ports)')"
names=(alice bob carol dave)
pids=()
stop_nodes() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_nodes EXIT
for i in 0 1 2 3; do
  peers=()
  for j in 0 1 2 3; do
    [ "$i" = "$j" ] || peers+=(--peer "http://127.0.0.1:${ports[$j]}")
  done
  "$BCFL" node --home "$DEMO/${names[$i]}" --listen "127.0.0.1:${ports[$i]}" "${peers[@]}" \
    >"$DEMO/${names[$i]}.node.log" 2>&1 &
  pids+=($!)
done
# The script waits by reading the node's public status (GET /v1/status, what `bcfl status` shows)
# from one small python3 that polls it: a `bcfl status` a second would cost about a CPU-second
# each (its imports) on the machine the nodes run on. A person simply runs `bcfl status`.
await_status() {  # await_status PORT EXPR: until EXPR holds on the node's status `d`, WAIT_S at most
  python3 - "$1" "$WAIT_S" "$2" <<'PY'
import json, sys, time, urllib.request
port, wait_s, expr = sys.argv[1], float(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + wait_s
while True:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=10) as answer:
            d = json.load(answer)
        if eval(expr, {}, {"d": d}):
            sys.exit(0)
    except (OSError, ValueError, LookupError, TypeError):
        pass  # not serving yet, or a status without a round: ask again
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.25)
PY
}
for i in 0 1; do  # alice and bob, the two members who train by hand below
  if ! await_status "${ports[$i]}" 'd["round"]["number"] == 1 and d["round"]["state"] == "open"'; then
    echo "round 1 did not open on ${names[$i]}'s node within ${WAIT_S} s" >&2
    tail -n 20 "$DEMO/${names[$i]}.node.log" >&2
    exit 1
  fi
done
"$BCFL" status --home "$DEMO/alice"

step "7. Each member's own data; two members train and submit by hand (default options)"
"$BCFL" data split "$REPO/sample_data/digits-train.csv" --members 4 --dirichlet 0.5 --seed 7 \
  --out "$DEMO/parts"
"$BCFL" train --home "$DEMO/alice" --data "$DEMO/parts/member-01.csv"
"$BCFL" submit --home "$DEMO/alice"
"$BCFL" train --home "$DEMO/bob" --data "$DEMO/parts/member-02.csv"
"$BCFL" submit --home "$DEMO/bob"

step "8. Round 1 closes with an aggregate (min_updates = 2 accepted updates)"
if ! await_status "${ports[0]}" 'd["round"]["number"] > 1 or d["round"]["state"] == "closed"'; then
  echo "round 1 was not closed within ${WAIT_S} s" >&2
  exit 1
fi
"$BCFL" status --home "$DEMO/alice"
# nothing to do now (round 2 waits for its trainers): the chain stays at its height
height() { "$BCFL" status --home "$DEMO/alice" --json | json_field 'd["height"]'; }
before=$(height); sleep 5; after=$(height)
[ "$before" = "$after" ] || { echo "the idle chain grew from $before to $after" >&2; exit 1; }
echo "idle for 5 s: still at height $after"

step "9. Export round 1's model with its proof, and verify the chain again"
"$BCFL" model export --home "$DEMO/alice" --round 1 --out "$DEMO/global.safetensors"
"$BCFL" verify-chain --home "$DEMO/alice"

step "Done: the tampered copy was refused (exit 1), round 1 closed with a committed aggregate."
