#!/usr/bin/env bash
# Run the three stages in order: CBOW embeddings, triplets, two-tower training.
#
#   scripts/run_pipeline.sh [SAMPLE_SIZE] [DATA SOURCE FLAGS...]
#
# SAMPLE_SIZE (default 50000) is the number of queries read for triplets (and for CBOW). Every other
# argument is passed to stages 1 and 2 as the data source, e.g. --dataset-path PATH --split dl21.
# Set EPOCHS, BATCH_SIZE, CBOW_EPOCHS, CHECKPOINT_DIR or TRAIN_FLAGS to change the training.
set -euo pipefail
cd "$(dirname "$0")/.."

SAMPLES=50000
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then
  SAMPLES=$1
  shift
fi
EPOCHS=${EPOCHS:-3}
BATCH_SIZE=${BATCH_SIZE:-256}
CBOW_EPOCHS=${CBOW_EPOCHS:-5}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-checkpoints}
DATA_DIR=data
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ "${args[i]}" == "--data-dir" ]] && DATA_DIR=${args[i + 1]}
done

echo "== 1/3 CBOW embeddings"
uv run text_embeddings/train_text_embeddings_cbow_msmarco.py -c "$CHECKPOINT_DIR" \
  --max-samples "$SAMPLES" --epochs "$CBOW_EPOCHS" "$@"

echo "== 2/3 Triplets"
marker=$(mktemp)
uv run preprocessing/generate_triplets.py --max-samples "$SAMPLES" "$@"
triplets=$(find "$DATA_DIR" -maxdepth 1 -name 'msmarco_triplets_*.pkl' -newer "$marker" | sort | tail -n 1)
rm -f "$marker"
if [[ -z "$triplets" ]]; then
  echo "error: no new triplets file in $DATA_DIR" >&2
  exit 1
fi

echo "== 3/3 Two-tower training on $triplets"
# shellcheck disable=SC2086  # TRAIN_FLAGS is a list of flags
uv run training/train_two_tower_from_triplets.py "$triplets" --epochs "$EPOCHS" --batch-size "$BATCH_SIZE" \
  --embeddings "$CHECKPOINT_DIR/msmarco_word2vec.pt" --output-dir "$CHECKPOINT_DIR" ${TRAIN_FLAGS:-}
