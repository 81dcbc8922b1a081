#!/usr/bin/env bash
# Full scale: index a cycled copy of the DL 2019 pool (N passages under fresh ids) with the dense
# index, IVF-PQ and the saved BM25 index, then answer BM25 and hybrid queries from the saved indexes.
# Prints the build's own report and /usr/bin/time's wall time and peak memory for each command.
#
#   nice -n 10 bash benchmarks/bench_scale.sh MODEL N WORK_DIR [extra index flags...]
#   e.g. nice -n 10 bash benchmarks/bench_scale.sh /tmp/scale/model.pt 8841823 /tmp/scale/run
#   FAISS=none: the dense index and BM25 only; add faiss later from the stored vectors with
#   `search/search.py faiss MODEL --index-dir WORK_DIR/index_N --faiss ivfpq --ivf-lists 4096` (12.5 min at 8.8M
#   on 2 shared cores with 4,096 lists; the default of about 4 x sqrt(N), 11,900 lists, ~3x the k-means)
#   IVF_LISTS: the IVF lists of the build (default 4096; 0: the default of search.py)
#
# WORK_DIR gets collection_N.tsv (~375 bytes a passage: 3.3 GB at 8.8M; never put it in the repository)
# and the index. Queries: the 43 judged DL 2019 queries and 1,000 MS MARCO dev queries.
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
COLLECTION=$WORK/collection_$N.tsv
if [ ! -f "$COLLECTION" ]; then
  # the cycled collection of the search benchmark (bench_search.py's grow_collection), written atomically
  uv run --project "$ROOT" python -c "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);
from bench_search import grow_collection; from msmarco_search.cli import run;
run(lambda argv: grow_collection(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])))" \
    "$ROOT/benchmarks" "$DATA/msmarco-trec-dl-2019/collection.tsv" "$COLLECTION" "$N"
fi
head -n 1000 "$DATA/msmarco-queries/queries.dev.small.tsv" > "$WORK/dev1000.tsv"
INDEX=$WORK/index_$N
timed() { /usr/bin/time -v "$@" 2> >(grep -E "Elapsed|Maximum resident|User time|System time" >&2); }
FAISS=${FAISS:-ivfpq}
faiss=()
[[ $FAISS != none ]] && faiss=(--faiss "$FAISS" --recall-queries "$WORK/dev1000.tsv")
[[ $FAISS != none && ${IVF_LISTS:-4096} != 0 ]] && faiss+=(--ivf-lists "${IVF_LISTS:-4096}")
echo "== index $N passages: dense + ${faiss[1]:-no} faiss + BM25"
timed uv run --project "$ROOT" "$ROOT/search/search.py" index "$MODEL" --dataset-path "$COLLECTION" \
  --index-dir "$INDEX" "${faiss[@]}" "$@"
uv run --project "$ROOT" python -c "import json,sys; m=json.load(open(sys.argv[1])); \
print({k: m[k] for k in ('count','dtype','encode_seconds')}, m['bm25'], m['faiss'])" "$INDEX/manifest.json"
du -sh "$INDEX" "$INDEX"/* "$INDEX"/bm25/*
for system in bm25 hybrid two-tower; do
  echo "== query: $system, the 43 DL 2019 queries one batch, from the saved indexes"
  timed uv run --project "$ROOT" "$ROOT/search/search.py" query "$MODEL" --index-dir "$INDEX" --system "$system" \
    --queries "$DATA/msmarco-trec-dl-2019/queries.dl19.tsv" --run-file "$WORK/run.$system.trec"
  echo "== query: $system, one query"
  timed uv run --project "$ROOT" "$ROOT/search/search.py" query "$MODEL" --index-dir "$INDEX" --system "$system" \
    -k 3 --snippet 60 "what is the daily life of thai people"
done
