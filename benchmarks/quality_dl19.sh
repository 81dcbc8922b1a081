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
  pools=("$DL19/collection.tsv" "$DL21/collection.tsv")
  uv run preprocessing/generate_triplets.py --mode ict --dataset-path "${pools[@]}" --output-dir "$WORK/triplets/ict"
  uv run preprocessing/generate_triplets.py --mode ict --dataset-path "${pools[@]}" --include "$judged" \
    --output-dir "$WORK/triplets/both"
  uv run preprocessing/generate_triplets.py --mode ict --dataset-path "${pools[@]}" --include "$judged" \
    --ict-per-passage 2 --output-dir "$WORK/triplets/both2"
fi

# The recipe: shared towers, word weights starting at the IDF, in-batch softmax (scale 20), word vectors and
# weights fine-tuned with sparse updates at 1e-2, the dense head at 1e-4, batch 256, 8 epochs; the held-out
# 5 % of the queries pick the best epoch.
RECIPE=(--shared-towers --init-token-weights idf --loss softmax --scale 20 --learning-rate 1e-4
        --embedding-learning-rate 1e-2 --batch-size 256)
# One thread: on a loaded machine, torch's spinning worker threads slow training several times over.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# train NAME EPOCHS TRIPLETS_DIR EMBEDDINGS [flags...]: one two-tower model into $WORK/models/NAME
train() {
  local name=$1 epochs=$2 triplets embeddings=$4
  triplets=$(newest "$WORK/triplets/$3" 'msmarco_triplets_*.pkl')
  shift 4
  echo "== train $name: $epochs epochs on $triplets $*"
  rm -rf "$WORK/models/$name"
  uv run training/train_two_tower_from_triplets.py "$triplets" --embeddings "$embeddings" --epochs "$epochs" \
    --output-dir "$WORK/models/$name" --data-dir "$WORK/data" "$@" | grep -E 'Validation|Keeping|Epoch|Saved'
}
model() { newest "$WORK/models/$1" 'two_tower_model_*.pt'; }
EMBEDDINGS=$WORK/cbow/msmarco_word2vec.pt
DL19_FILES=(--collection "$DL19/collection.tsv" --queries "$DL19/queries.dl19.tsv"
            --qrels "$DL19/qrels.dl19-passage.in-collection.txt")

if want train; then
  train main "$EPOCHS" both "$EMBEDDINGS" "${RECIPE[@]}"
fi

if want evaluate; then
  echo "== evaluate on DL 2019: full ranking over the pool"
  uv run evaluation/evaluate.py "${DL19_FILES[@]}" --model "$(model main)" --embeddings "$EMBEDDINGS" \
    --word-benchmarks --output-dir "$WORK/eval_main"
fi

if want ablation; then
  # Each model changes one choice of the recipe (flags given later win over the recipe's).
  if [[ ! -f $WORK/cbow5/msmarco_word2vec.pt ]]; then
    uv run text_embeddings/train_text_embeddings_cbow_msmarco.py --dataset-path "$WORK/alltext/collection.tsv" \
      --epochs 5 --vector-size 300 --min-count 3 -c "$WORK/cbow5" --data-dir "$WORK/data" --no-word-benchmarks
  fi
  train judged-only "$EPOCHS" dl21 "$EMBEDDINGS" "${RECIPE[@]}" --validation-fraction 0.1
  train ict-only "$EPOCHS" ict "$EMBEDDINGS" "${RECIPE[@]}"
  train ict-2-per-passage "$EPOCHS" both2 "$EMBEDDINGS" "${RECIPE[@]}"
  train separate-towers "$EPOCHS" both "$EMBEDDINGS" --init-token-weights idf --learning-rate 1e-4 --batch-size 256
  train weights-start-at-1 "$EPOCHS" both "$EMBEDDINGS" "${RECIPE[@]}" --init-token-weights one
  train no-token-weights "$EPOCHS" both "$EMBEDDINGS" "${RECIPE[@]}" --no-token-weights
  train frozen-embeddings "$EPOCHS" both "$EMBEDDINGS" "${RECIPE[@]}" --freeze-embeddings
  train triplet-loss "$EPOCHS" both "$EMBEDDINGS" "${RECIPE[@]}" --loss triplet
  train dense-lr-1e-3 "$EPOCHS" both "$EMBEDDINGS" "${RECIPE[@]}" --learning-rate 1e-3
  train cbow-5-epochs "$EPOCHS" both "$WORK/cbow5/msmarco_word2vec.pt" "${RECIPE[@]}"
  train 2-epochs 2 both "$EMBEDDINGS" "${RECIPE[@]}"
  models=(--model "recipe=$(model main)")
  for name in judged-only ict-only ict-2-per-passage separate-towers weights-start-at-1 no-token-weights \
              frozen-embeddings triplet-loss dense-lr-1e-3 cbow-5-epochs 2-epochs; do
    models+=(--model "$name=$(model "$name")")
  done
  echo "== evaluate the ablation on DL 2019"
  uv run evaluation/evaluate.py "${DL19_FILES[@]}" "${models[@]}" --systems two-tower,bm25 \
    --output-dir "$WORK/eval_ablation"
fi
