#!/usr/bin/env bash
# Scale: index N distinct passages (benchmarks/make_dataset.py --format collection: real sentences of the DL 2019
# and 2021 pools reshuffled, no two passages equal) with the dense index, IVF-PQ and the saved BM25 index; answer
# BM25, hybrid and two-tower queries from the saved indexes; then exact search and faiss recall@10 against it over
# 1,000 real MS MARCO dev queries (benchmarks/faiss_sweep.py), for IVF-PQ and, with HNSW=1, for HNSW.
# Prints each build's own report, /usr/bin/time's wall time and peak memory for each command, and sizes on disk.
#
#   nice -n 10 bash benchmarks/bench_scale.sh MODEL N WORK_DIR [extra index flags...]
#   e.g. nice -n 10 bash benchmarks/bench_scale.sh /tmp/scale/model.pt 8841823 /tmp/scale/run
#
#   CYCLED=1: the cycled pool instead (the DL 2019 pool repeated under fresh ids until N passages: every passage
#     there N / 28,606 times, so exact search's top 10 are copies of one passage; kept to compare with figures
#     measured on it)
#   SEED: the distinct collection's seed (0)
#   FAISS=none: the dense index and BM25 only, no faiss and no recall; add faiss later from the stored vectors with
#     `search/search.py faiss MODEL --index-dir WORK_DIR/index_... --faiss ivfpq --ivf-lists 4096`
#   IVF_LISTS: the IVF lists of the build (default 4096; 0: the default of search.py, about 4 x sqrt(N))
#   NPROBE, REFINE: the IVF-PQ settings swept (default 16,64,256 and 10,40)
#   HNSW=1: then replace the faiss index by HNSW (M 32; float32 vectors in memory: 1.2 KB a passage) and sweep
#     EF_SEARCH (default 64,128,256)
#
# WORK_DIR gets the collection (~375 bytes a passage: 3.3 GB at 8.8M; never put it in the repository), the 1,000
# dev queries (dev1000.tsv) and the index. A size the machine cannot hold (the collection and index on WORK_DIR's
# disk, the build's memory, both estimated) is refused before any work, exit 2.
set -euo pipefail
MODEL=$1; N=$2; WORK=$3; shift 3
# N passages: a whole number the project's counts take (2**31 - 1, faiss's int), checked before any work
if ! [[ $N =~ ^[1-9][0-9]{0,9}$ ]] || (( N > 2147483647 )); then
  echo "error: N must be a whole number from 1 to 2,147,483,647, got '$N'" >&2; exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${DATA:-$ROOT/../shared/data}
export MSMARCO_SEARCH_NO_PROGRESS=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$WORK"
QUERIES=$WORK/dev1000.tsv
# a command's wall time, CPU time and peak memory (/usr/bin/time), and its own lines on stderr (errors, warnings)
timed() { /usr/bin/time -v "$@" 2> >(grep -E "^(error|warning|wrote)|Elapsed|Maximum resident|User time|System time" >&2); }
if [[ ${CYCLED:-0} == 1 ]]; then
  NAME=cycled_$N
  COLLECTION=$WORK/collection_$NAME.tsv
  if [ ! -f "$COLLECTION" ]; then
    # the cycled collection of the search benchmark (bench_search.py's grow_collection), written atomically
    uv run --project "$ROOT" python -c "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);
from bench_search import grow_collection; from msmarco_search.cli import run;
run(lambda argv: grow_collection(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])))" \
      "$ROOT/benchmarks" "$DATA/msmarco-trec-dl-2019/collection.tsv" "$COLLECTION" "$N"
  fi
  [ -f "$QUERIES" ] || head -n 1000 "$DATA/msmarco-queries/queries.dev.small.tsv" > "$QUERIES"
else
  NAME=distinct_${N}_seed${SEED:-0}
  COLLECTION=$WORK/collection_$NAME.tsv
  if [ ! -f "$COLLECTION" ]; then
    made=(--format collection --size "$N" --seed "${SEED:-0}" --output "$COLLECTION"
          --pools "$DATA/msmarco-trec-dl-2019/collection.tsv" "$DATA/msmarco-v2-trec-dl-2021/collection.tsv")
    [ -f "$QUERIES" ] || made+=(--queries-output "$QUERIES" --queries-from "$DATA/msmarco-queries/queries.dev.small.tsv")
    echo "== make $N distinct passages"
    # not timed: a size the machine cannot hold is refused in one line on stderr, and the script stops there
    uv run --project "$ROOT" "$ROOT/benchmarks/make_dataset.py" "${made[@]}"
  fi
fi
INDEX=$WORK/index_$NAME
FAISS=${FAISS:-ivfpq}
faiss=()
[[ $FAISS != none ]] && faiss=(--faiss "$FAISS" --recall-queries "$QUERIES")
[[ $FAISS != none && ${IVF_LISTS:-4096} != 0 ]] && faiss+=(--ivf-lists "${IVF_LISTS:-4096}")
echo "== index $N passages ($NAME): dense + ${faiss[1]:-no} faiss + BM25"
timed uv run --project "$ROOT" "$ROOT/search/search.py" index "$MODEL" --dataset-path "$COLLECTION" \
  --index-dir "$INDEX" "${faiss[@]}" "$@"
uv run --project "$ROOT" python -c "import json,sys; m=json.load(open(sys.argv[1])); \
print({k: m[k] for k in ('count','dtype','encode_seconds')}, m['bm25'], m['faiss'])" "$INDEX/manifest.json"
du -sh "$INDEX"/* "$INDEX"/bm25/*  # each part, then the whole (du counts a file once: the whole last)
du -sh "$INDEX"
for system in bm25 hybrid two-tower; do
  echo "== query: $system, the 43 DL 2019 queries one batch, from the saved indexes"
  timed uv run --project "$ROOT" "$ROOT/search/search.py" query "$MODEL" --index-dir "$INDEX" --system "$system" \
    --queries "$DATA/msmarco-trec-dl-2019/queries.dl19.tsv" --run-file "$WORK/run.$NAME.$system.trec"
  echo "== query: $system, one query"
  timed uv run --project "$ROOT" "$ROOT/search/search.py" query "$MODEL" --index-dir "$INDEX" --system "$system" \
    -k 3 --snippet 60 "what is the daily life of thai people"
done
[[ $FAISS == none ]] && exit 0
echo "== exact search and $FAISS recall@10 against it, 1,000 dev queries"
timed uv run --project "$ROOT" "$ROOT/benchmarks/faiss_sweep.py" "$MODEL" "$INDEX" --queries "$QUERIES" \
  --max-queries 1000 --nprobe "${NPROBE:-16,64,256}" --refine "${REFINE:-10,40}"
[[ ${HNSW:-0} == 1 ]] || exit 0
echo "== HNSW (M 32) in place of $FAISS"
timed uv run --project "$ROOT" "$ROOT/search/search.py" faiss "$MODEL" --index-dir "$INDEX" --faiss hnsw \
  --recall-queries "$QUERIES"
du -sh "$INDEX/faiss.index"
timed uv run --project "$ROOT" "$ROOT/benchmarks/faiss_sweep.py" "$MODEL" "$INDEX" --queries "$QUERIES" \
  --max-queries 1000 --nprobe 16 --refine 1 --ef-search "${EF_SEARCH:-64,128,256}"
