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

if want triplets; then
  echo "== triplets: DL 2021 judged pairs (grade >= 2, BM25-top-100 hard negatives); inverse-cloze pairs"
  rm -rf "$WORK/triplets" && mkdir -p "$WORK/triplets"
  uv run preprocessing/generate_triplets.py --dataset-path "$DL21" --split dl21 --min-relevance 2 \
    --negatives hard --output-dir "$WORK/triplets/dl21"
  judged=$(newest "$WORK/triplets/dl21" 'msmarco_triplets_*.pkl')
  uv run preprocessing/generate_triplets.py --mode ict --dataset-path "$DL19/collection.tsv" "$DL21/collection.tsv" \
    --output-dir "$WORK/triplets/ict"
  uv run preprocessing/generate_triplets.py --mode ict --dataset-path "$DL19/collection.tsv" "$DL21/collection.tsv" \
    --include "$judged" --output-dir "$WORK/triplets/both"
fi

# train NAME EPOCHS TRIPLETS_DIR EMBEDDINGS [flags...]: one two-tower model into $WORK/models/NAME
train() {
  local name=$1 epochs=$2 triplets embeddings=$4
  triplets=$(newest "$WORK/triplets/$3" 'msmarco_triplets_*.pkl')
  shift 4
  echo "== train $name: $epochs epochs on $triplets $*"
  rm -rf "$WORK/models/$name"
  uv run training/train_two_tower_from_triplets.py "$triplets" --embeddings "$embeddings" --epochs "$epochs" \
    --batch-size "$BATCH_SIZE" --learning-rate "$LEARNING_RATE" --embedding-learning-rate 1e-2 --scale 20 \
    --output-dir "$WORK/models/$name" --data-dir "$WORK/data" "$@" | grep -v '^  [0-9]*\. ' || true
  newest "$WORK/models/$name" 'two_tower_model_*.pt' > /dev/null
}
model() { newest "$WORK/models/$1" 'two_tower_model_*.pt'; }
EMBEDDINGS=$WORK/cbow/msmarco_word2vec.pt
DL19_FILES=(--collection "$DL19/collection.tsv" --queries "$DL19/queries.dl19.tsv"
            --qrels "$DL19/qrels.dl19-passage.in-collection.txt")

if want train; then
  train main "$EPOCHS" both "$EMBEDDINGS"
fi

if want evaluate; then
  echo "== evaluate on DL 2019: full ranking over the pool"
  uv run evaluation/evaluate.py "${DL19_FILES[@]}" --model "$(model main)" --embeddings "$EMBEDDINGS" \
    --word-benchmarks --output-dir "$WORK/eval_main"
fi

if want ablation; then
  # Each row changes one choice of the recipe; all at ABLATION_EPOCHS to fit a shared 2-core machine.
  A=${ABLATION_EPOCHS:-3}
  if [[ ! -f $WORK/cbow5/msmarco_word2vec.pt ]]; then
    uv run text_embeddings/train_text_embeddings_cbow_msmarco.py --dataset-path "$WORK/alltext/collection.tsv" \
      --epochs 5 --vector-size 300 --min-count 3 -c "$WORK/cbow5" --data-dir "$WORK/data" --no-word-benchmarks
  fi
  train recipe "$A" both "$EMBEDDINGS"
  train judged-only "$A" dl21 "$EMBEDDINGS" --validation-fraction 0.1
  train ict-only "$A" ict "$EMBEDDINGS"
  train triplet-loss "$A" both "$EMBEDDINGS" --loss triplet
  train frozen-embeddings "$A" both "$EMBEDDINGS" --freeze-embeddings
  train no-token-weights "$A" both "$EMBEDDINGS" --no-token-weights
  train cbow-5-epochs "$A" both "$WORK/cbow5/msmarco_word2vec.pt"
  models=()
  for name in recipe judged-only ict-only triplet-loss frozen-embeddings no-token-weights cbow-5-epochs; do
    models+=(--model "$name=$(model "$name")")
  done
  echo "== evaluate the ablation on DL 2019"
  uv run evaluation/evaluate.py "${DL19_FILES[@]}" "${models[@]}" --systems two-tower,bm25 \
    --output-dir "$WORK/eval_ablation"
fi
