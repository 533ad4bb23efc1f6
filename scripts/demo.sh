#!/usr/bin/env bash
# The main job on data and a tokenizer the repository ships: build masked, packed shards from the
# fixture conversations (messages with tool calls, ShareGPT, Alpaca) with a small Qwen-style tokenizer
# that carries the real Qwen3 chat template, then say where everything is.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$REPO"
out="${1:-build/demo}"
"$VENV/bin/sftdata" build fixtures/data/messages.jsonl fixtures/data/sharegpt.json fixtures/data/alpaca.json \
    --tokenizer fixtures/tokenizers/chatml-bpe --max-length 1024 --pack --out "$out" --overwrite --quiet
echo
echo "shards:   $(cd "$out" && ls shard-*.arrow | sed "s|^|$out/|" | tr '\n' ' ')"
echo "manifest: $out/manifest.json    rejects: $out/rejects.jsonl"
echo "look at the rows:  $VENV/bin/sftdata view $out --row 0"
echo "numbers:           $VENV/bin/sftdata stats $out"
