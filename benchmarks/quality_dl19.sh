#!/usr/bin/env bash
# Quality on TREC DL 2019 (full ranking over its 28.6K-passage pool, 43 queries, graded NIST qrels):
# BM25, zero-shot CBOW, the trained two-tower and the hybrids, plus an ablation of the training choices.
#
#   bash benchmarks/quality_dl19.sh [STEP...]      steps: corpus cbow triplets train evaluate ablation (default all)
#
# Training never sees a DL 2019 judgment or query: CBOW learns from all other real text in ../shared/data
# (collections, MS MARCO train/dev queries, DL 2021 queries...), the two-tower from the DL 2021 judged pairs
# plus inverse-cloze pairs cut from the passages of both pools (DL 2019 and DL 2021), which needs no labels.
# Everything derived goes to $WORK (default /tmp/msmarco_quality_dl19), never into the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data}
WORK=${WORK:-/tmp/msmarco_quality_dl19}
DL19=$DATA/msmarco-trec-dl-2019
DL21=$DATA/msmarco-v2-trec-dl-2021
CBOW_EPOCHS=${CBOW_EPOCHS:-20}
EPOCHS=${EPOCHS:-8}
BATCH_SIZE=${BATCH_SIZE:-256}
LEARNING_RATE=${LEARNING_RATE:-1e-3}
export MSMARCO_SEARCH_NO_PROGRESS=${MSMARCO_SEARCH_NO_PROGRESS:-1}
steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=(corpus cbow triplets train evaluate ablation)
mkdir -p "$WORK"
want() { [[ " ${steps[*]} " == *" $1 "* ]]; }
newest() { find "$1" -maxdepth 1 -name "$2" -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2-; }

if want corpus; then
  echo "== corpus: every real text in $DATA except the DL 2019 queries, as one collection.tsv"
  mkdir -p "$WORK/alltext"
  {
    for f in "$DL19/collection.tsv" "$DL21/collection.tsv" "$DATA/vaswani/collection.tsv" \
             "$DATA/cacm/collection.tsv" "$DATA"/msmarco-queries/queries.*.tsv "$DL21/queries.dl21.tsv" \
             "$DATA/vaswani/queries.tsv" "$DATA/cacm/queries.tsv"; do
      awk -F'\t' -v tag="$(basename "$(dirname "$f")")" '{ $1 = ""; sub(/^\t/, ""); print tag "-" NR "\t" $0 }' OFS='\t' "$f"
    done
    awk -F'\t' '{ print "triples-" NR "\t" $1 " " $2 " " $3 }' "$DATA/msmarco-triples-sample/triples.train.small.head100.tsv"
    awk '{ print "lee-" NR "\t" $0 }' "$DATA/word-embedding-benchmarks/lee_background.cor"
  } > "$WORK/alltext/collection.tsv"
  wc -l "$WORK/alltext/collection.tsv"
fi

if want cbow; then
  echo "== cbow: 300-d, $CBOW_EPOCHS epochs on the corpus above"
  uv run text_embeddings/train_text_embeddings_cbow_msmarco.py --dataset-path "$WORK/alltext/collection.tsv" \
    --epochs "$CBOW_EPOCHS" --vector-size 300 --min-count 3 -c "$WORK/cbow" --data-dir "$WORK/data"
fi
