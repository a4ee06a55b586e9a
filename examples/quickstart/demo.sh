#!/bin/sh
# End-to-end demo: build dsari, drop a trigger file for the quickstart job,
# let the daemon run it once, and show what was recorded. Leaves nothing behind.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cargo build --quiet --manifest-path "$here/../../Cargo.toml"
dsari="$here/../../target/debug/dsari"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/etc" "$work/var/trigger/hello"
cp "$here/dsari.yaml" "$work/etc/dsari.yaml"
printf '{"data_dir": "%s"}\n' "$work/var" > "$work/etc/dsari.json"

echo "== dsari config check"
"$dsari" config check -c "$work/etc"

echo "== a CI pipeline drops a trigger file (written to a dot-name, then renamed into place)"
printf '{"environment": {"WHO": "the quickstart demo"}, "description": "demo trigger"}\n' \
  > "$work/var/trigger/hello/.trigger.json.tmp"
mv "$work/var/trigger/hello/.trigger.json.tmp" "$work/var/trigger/hello/trigger.json"

echo "== dsari daemon --once: run what is due, wait, print the recorded runs"
"$dsari" daemon -c "$work/etc" --once

echo "== the run's output (data_dir/runs/JOB/RUN_ID/output.txt)"
cat "$work"/var/runs/hello/*/output.txt

echo "== the row in the runs table of $work/var/dsari.sqlite3 (dsari run list --format json)"
"$dsari" run list -c "$work/etc" --format json
