#!/usr/bin/env bash
# Interleaved before/after of training and indexing speed, an older commit against this checkout:
#
#   git worktree add /tmp/old-main 0ed143a && (cd /tmp/old-main && uv sync)
#   OLD=/tmp/old-main bash benchmarks/before_after.sh MODEL.pt TRIPLETS.pkl EMBEDDINGS.pt
#
# Each of 3 rounds indexes the DL 2019 pool (dense only) and trains 300 steps, old then new; it prints the
# wall time of each index command and the triplets/s of each training run (docs/experiments.md, "Search and index speed", has the figures).
set -uo pipefail
cd "$(dirname "$0")/.."
NEW=$PWD
OLD=${OLD:-/tmp/old-main}
WORK=${WORK:-/tmp/before_after}
MODEL=$(realpath "$1") TRIPLETS=$(realpath "$2") EMB=$(realpath "$3")
COLL=$(realpath "${DATA:-../shared/data}/msmarco-trec-dl-2019/collection.tsv")
export MSMARCO_SEARCH_NO_PROGRESS=1 OMP_NUM_THREADS=1
mkdir -p "$WORK"
for round in 1 2 3; do
  for side in old new; do
    dir=$OLD extra=()
    [[ $side == new ]] && { dir=$NEW; extra=(--no-bm25); }  # the old index had no BM25 part
    rm -rf "$WORK/index_$side"
    start=$(date +%s.%N)
    (cd "$dir" && uv run -q search/search.py index "$MODEL" --dataset-path "$COLL" --index-dir "$WORK/index_$side" \
      "${extra[@]}" > /dev/null 2>&1)
    echo "round $round $side index_seconds $(echo "$(date +%s.%N) - $start" | bc)"
    (cd "$dir" && uv run -q training/train_two_tower_from_triplets.py "$TRIPLETS" --embeddings "$EMB" \
      --batch-size 256 --max-steps 300 --no-save --validation-fraction 0 --shared-towers \
      --data-dir "$WORK/data_$side" 2>&1 | grep -o "[0-9,]* triplets/s" | tail -n 1 | sed "s/^/round $round $side train /")
  done
done
