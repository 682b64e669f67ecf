#!/usr/bin/env bash
# Packs a round's logs into one results.tgz beside summary.txt (a remote runner may bring back
# a few files only): everything else under OUT is archived, then deleted.
#   bash tools/pack_results.sh OUT
set -eu
OUT=$1
tar czf /tmp/lmkan-results.tgz -C "$OUT" --exclude=./results.tgz --exclude=./summary.txt .
mv /tmp/lmkan-results.tgz "$OUT/results.tgz"
find "$OUT" -type f ! -name results.tgz ! -name summary.txt -delete
