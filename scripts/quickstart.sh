#!/usr/bin/env bash
# The Quick start's main job: four member identities, a consortium file filled with their dids,
# the genesis block, the chain verified, then one byte of a stored blob changed and the fault
# named by verify-chain. Everything lives in a throwaway directory, .bcfl-demo/quickstart
# (or $BCFL_DEMO_DIR: the test suite runs this script in a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
BCFL=${BCFL:-.venv/bin/bcfl}
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
step "Done: the tampered copy was refused (exit 1), the original verifies (exit 0)."
