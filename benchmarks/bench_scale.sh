#!/usr/bin/env bash
# Full scale (issue 14): index a cycled copy of the DL 2019 pool (N passages under fresh ids) with the dense
# index, IVF-PQ and the saved BM25 index, then answer BM25 and hybrid queries from the saved indexes.
# Prints the build's own report and /usr/bin/time's wall time and peak memory for each command.
#
#   nice -n 10 bash benchmarks/bench_scale.sh MODEL N WORK_DIR [extra index flags...]
#   e.g. nice -n 10 bash benchmarks/bench_scale.sh /tmp/scale/model.pt 8841823 /tmp/scale/run
#
# WORK_DIR gets collection_N.tsv (~375 bytes a passage: 3.3 GB at 8.8M; never put it in the repository)
# and the index. Queries: the 43 judged DL 2019 queries and 1,000 MS MARCO dev queries.
set -euo pipefail
MODEL=$1; N=$2; WORK=$3; shift 3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${DATA:-$ROOT/../shared/data}
export MSMARCO_SEARCH_NO_PROGRESS=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$WORK"
COLLECTION=$WORK/collection_$N.tsv
if [ ! -f "$COLLECTION" ]; then
  uv run --project "$ROOT" python - "$DATA/msmarco-trec-dl-2019/collection.tsv" "$COLLECTION" "$N" <<'PY'
import sys
from pathlib import Path
from msmarco_search.index import iter_collection
from msmarco_search.fileio import atomic_write
source, target, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
def write(tmp):
    with open(tmp, "w", encoding="utf-8") as handle:
        written = 0
        while written < count:
            for _, _, text in iter_collection(source):
                handle.write(f"{written}\t{text}\n")
                written += 1
                if written == count:
                    return
atomic_write(target, write)
PY
fi
head -n 1000 "$DATA/msmarco-queries/queries.dev.small.tsv" > "$WORK/dev1000.tsv"
INDEX=$WORK/index_$N
timed() { /usr/bin/time -v "$@" 2> >(grep -E "Elapsed|Maximum resident|User time|System time" >&2); }
echo "== index $N passages: dense + faiss ivfpq + BM25"
timed uv run --project "$ROOT" "$ROOT/search/search.py" index "$MODEL" --dataset-path "$COLLECTION" \
  --index-dir "$INDEX" --faiss ivfpq --recall-queries "$WORK/dev1000.tsv" "$@"
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
