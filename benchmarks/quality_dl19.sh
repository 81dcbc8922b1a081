#!/usr/bin/env bash
# Quality on TREC DL 2019 (full ranking over its 28.6K-passage pool, 43 queries, graded NIST qrels):
# BM25, zero-shot CBOW, the trained two-tower and the hybrids, plus an ablation of the training choices.
#
#   bash benchmarks/quality_dl19.sh [STEP...]      steps: corpus cbow triplets select levers sweep fusion feedback train
#                                                   evaluate ablation
#                                                   (default all; about 1 h 40 min on 2 shared cores, the
#                                                   levers step ~11 min of it;
#                                                   REUSE=1 keeps the vectors and models already made)
#
# Training never sees a DL 2019 judgment or query: CBOW learns from all other real text in ../shared/data
# (collections, MS MARCO train/dev queries, DL 2021 queries...), the two-tower from the DL 2021 judged pairs
# plus inverse-cloze pairs cut from the passages of both pools (DL 2019 and DL 2021), which needs no labels.
# Settings are chosen on DL 2021 (the select step), and DL 2019 is only measured.
# Everything derived goes to $WORK (default /tmp/msmarco_quality_dl19), never into the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data}
WORK=${WORK:-/tmp/msmarco_quality_dl19}
DL19=$DATA/msmarco-trec-dl-2019
DL21=$DATA/msmarco-v2-trec-dl-2021
# 40 CBOW epochs, not 20: on the DL 2021 split, two CBOW draws each gave the two-tower +0.009-0.013 and two-tower-prf
# +0.013-0.020 (3 seeds each; benchmarks/levers_dl21.py cbow-40-epochs cbow-40-epochs-seed-7, docs/experiments.md)
CBOW_EPOCHS=${CBOW_EPOCHS:-40}
CBOW_WINDOW=${CBOW_WINDOW:-20}
# the recipe's inverse-cloze pseudo-queries per passage and two-tower epochs: 8 fresh cuts of each passage seen
# once, chosen on DL 2021 (the 8 x 1 row of docs/experiments.md, "Inverse-cloze pseudo-queries") over 4 cuts seen twice (RECIPE_ICT=4
# RECIPE_EPOCHS=2 gives the rows measured before it)
RECIPE_ICT=${RECIPE_ICT:-8}
RECIPE_EPOCHS=${RECIPE_EPOCHS:-1}
EPOCHS=${EPOCHS:-$RECIPE_EPOCHS}
export MSMARCO_SEARCH_NO_PROGRESS=${MSMARCO_SEARCH_NO_PROGRESS:-1}
steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=(corpus cbow triplets select levers fusion feedback train evaluate ablation)
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

# cbow DIR [flags...]: 300-d CBOW vectors of the corpus above into DIR (kept if already there with REUSE=1), on one
# thread as in the main job, so a rerun gives the same vectors (CBOW_WORKERS=0: all cores, faster, not reproducible)
cbow() {
  local dir=$1
  shift
  if [[ ${REUSE:-0} == 1 && -f $dir/msmarco_word2vec.pt ]]; then echo "== reuse $dir"; return; fi
  uv run text_embeddings/train_text_embeddings_cbow_msmarco.py --dataset-path "$WORK/alltext/collection.tsv" \
    --vector-size 300 --min-count 3 --workers "${CBOW_WORKERS:-1}" -c "$dir" --data-dir "$WORK/data" "$@"
}

if want cbow; then
  echo "== cbow: 300-d, window $CBOW_WINDOW, $CBOW_EPOCHS epochs on the corpus above"
  cbow "$WORK/cbow" --window "$CBOW_WINDOW" --epochs "$CBOW_EPOCHS"
  # gensim's default window (5), which chose the inverse-cloze settings (select) and is an ablation row
  cbow "$WORK/cbow-w5" --window 5 --epochs "$CBOW_EPOCHS" --no-word-benchmarks
fi

if want triplets; then
  echo "== triplets: DL 2021 judged pairs (grade >= 2, BM25-top-100 hard negatives); inverse-cloze pairs"
  rm -rf "$WORK/triplets" && mkdir -p "$WORK/triplets"
  uv run preprocessing/generate_triplets.py --dataset-path "$DL21" --split dl21 --min-relevance 2 \
    --negatives hard --output-dir "$WORK/triplets/dl21"
  judged=$(newest "$WORK/triplets/dl21" 'msmarco_triplets_*.pkl')
  pools=("$DL19/collection.tsv" "$DL21/collection.tsv")
  ict() { local dir=$1; shift; uv run preprocessing/generate_triplets.py --mode ict --dataset-path "${pools[@]}" \
            --output-dir "$WORK/triplets/$dir" "$@"; }
  # inverse cloze alone, for choosing its settings on DL 2021 (select) and for the ablation
  ict ict1
  ict ict1-8w --ict-max-query-words 8
  ict ict2 --ict-per-passage 2
  ict ict4 --ict-per-passage 4
  ict ict2-mixed --ict-max-query-words 8 --seed 43 --include "$(newest "$WORK/triplets/ict1" '*.pkl')"
  # the recipe's training data ($RECIPE_ICT pseudo-queries per passage) and an earlier recipe's (1), with the judged pairs
  ict both --ict-per-passage "$RECIPE_ICT" --include "$judged"
  ict both1 --include "$judged"
fi

# The recipe: CBOW vectors with a 20-word window, shared towers, word weights starting at the IDF, in-batch
# softmax (scale 20), word vectors and weights fine-tuned with sparse updates at 1e-2, the dense head at 1e-4,
# batch 1,024 (256 until the sweep step chose 1,024 on DL 2021), 8 pseudo-queries per passage for 1 epoch
# (4 for 2 epochs until the sweep step's x8-e1 row), and the average of the weights of 3 such models trained
# with other seeds (the window, the pseudo-queries and the averaging were chosen on DL 2021 by the select
# step); with more than one epoch, the held-out 5 % of the queries pick each model's best epoch.
RECIPE=(--shared-towers --init-token-weights idf --loss softmax --scale 20 --learning-rate 1e-4
        --embedding-learning-rate 1e-2 --batch-size 1024)
# One thread: on a loaded machine, torch's spinning worker threads slow training several times over.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# train NAME EPOCHS TRIPLETS_DIR EMBEDDINGS [flags...]: one two-tower model into $WORK/models/NAME
train() {
  local name=$1 epochs=$2 triplets embeddings=$4
  triplets=$(newest "$WORK/triplets/$3" 'msmarco_triplets_*.pkl')
  shift 4
  if [[ ${REUSE:-0} == 1 && -d $WORK/models/$name && -n $(model "$name") ]]; then
    echo "== reuse $name: $(model "$name")"
    return
  fi
  echo "== train $name: $epochs epochs on $triplets $*"
  rm -rf "$WORK/models/$name"
  uv run training/train_two_tower_from_triplets.py "$triplets" --embeddings "$embeddings" --epochs "$epochs" \
    --output-dir "$WORK/models/$name" --data-dir "$WORK/data" "$@" | grep -E 'Keeping|Saved'
}
model() { newest "$WORK/models/$1" 'two_tower_model_*.pt'; }
# average NAME MODEL_NAME...: the average of the weights of models (a "model soup") into $WORK/models/NAME
average() {
  local name=$1 parts=()
  shift
  for part in "$@"; do parts+=("$(model "$part")"); done
  rm -rf "$WORK/models/$name" && mkdir -p "$WORK/models/$name"
  uv run training/average_two_tower_models.py "${parts[@]}" --output-dir "$WORK/models/$name"
}
EMBEDDINGS=$WORK/cbow/msmarco_word2vec.pt
DL19_FILES=(--collection "$DL19/collection.tsv" --queries "$DL19/queries.dl19.tsv"
            --qrels "$DL19/qrels.dl19-passage.in-collection.txt")
DL21_FILES=(--collection "$DL21/collection.tsv" --queries "$DL21/queries.dl21.tsv"
            --qrels "$DL21/qrels.dl21-passage.in-collection.txt")
SEEDS=(42 1 2)
# the rows of the levers, sweep and evaluate steps: with the feedback systems (the select step's rows came first)
SYSTEMS=${SYSTEMS:-two-tower,bm25,hybrid,two-tower-prf,hybrid-prf}

# with_seeds NAME EPOCHS TRIPLETS_DIR EMBEDDINGS: models select/NAME-s<SEED> for every seed and their average
# select/NAME-soup, all added to the array models (for one evaluate.py call)
with_seeds() {
  local name=$1 epochs=$2 triplets=$3 embeddings=$4 seed parts=()
  for seed in "${SEEDS[@]}"; do
    train "select/$name-s$seed" "$epochs" "$triplets" "$embeddings" "${RECIPE[@]}" --seed "$seed"
    models+=(--model "$name-s$seed=$(model "select/$name-s$seed")")
    parts+=("select/$name-s$seed")
  done
  average "select/$name-soup" "${parts[@]}"
  models+=(--model "$name-soup=$(model "select/$name-soup")")
}

# split_dl21: judged pairs of half the DL 2021 queries train; the other half (every second query id, sorted)
# is evaluated over the DL 2021 pool ($split/train and $split/dev, each a TSV folder)
split=$WORK/dl21-split
split_dl21() {
  rm -rf "$split" && mkdir -p "$split/train" "$split/dev"
  LC_ALL=C sort "$DL21/queries.dl21.tsv" | awk -F'\t' -v dir="$split" \
    '{ print > (dir "/" (NR % 2 ? "train" : "dev") "/queries.dl21.tsv") }'
  for half in train dev; do
    ln -s "$(realpath "$DL21/collection.tsv")" "$split/$half/collection.tsv"
    awk -F'\t' 'NR == FNR { keep[$1] = 1; next } $1 in keep' "$split/$half/queries.dl21.tsv" \
      "$DL21/top100.bm25.dl21.tsv" > "$split/$half/top100.bm25.dl21.tsv"
    awk 'NR == FNR { split($0, f, "\t"); keep[f[1]] = 1; next } $1 in keep' "$split/$half/queries.dl21.tsv" \
      "$DL21/qrels.dl21-passage.in-collection.txt" > "$split/$half/qrels.dl21-passage.in-collection.txt"
  done
}

if want select; then
  W5=$WORK/cbow-w5/msmarco_word2vec.pt
  # Settings are chosen on DL 2021, never on DL 2019, in the order below, the first two with gensim's default
  # CBOW window (5). The inverse-cloze settings: models trained on pseudo-queries alone (no judgment), evaluated
  # on all 53 DL 2021 queries over their pool, 3 seeds each (one seed moves nDCG@10 by about 0.01 here), and
  # their average. The settings keep the training steps about equal (passages x copies x epochs).
  settings=("x1-16w-e8 8 ict1" "x1-8w-e8 8 ict1-8w" "x2-16w-e4 4 ict2" "x2-16w-e3 3 ict2" "x4-16w-e2 2 ict4"
            "x4-16w-e4 4 ict4" "x2-mixed-e4 4 ict2-mixed")
  models=()
  for setting in "${settings[@]}"; do
    read -r name epochs triplets <<< "$setting"
    with_seeds "$name" "$epochs" "$triplets" "$W5"
  done
  echo "== select: inverse-cloze settings on DL 2021 (all 53 queries); NAME-soup is the average of the seeds"
  uv run evaluation/evaluate.py "${DL21_FILES[@]}" "${models[@]}" --systems two-tower,bm25,hybrid \
    --output-dir "$WORK/eval_select" --overwrite
  uv run benchmarks/mean_over_seeds.py "$WORK/eval_select/evaluation.json"

  # How much of the DL 2021 judged pairs to mix in: none, once or four times, with the best inverse-cloze
  # setting. Judged pairs of half the DL 2021 queries train; the other half (every second query id, sorted) is
  # evaluated over the DL 2021 pool.
  split_dl21
  rm -rf "$WORK/triplets/half-"*
  uv run preprocessing/generate_triplets.py --dataset-path "$split/train" --split dl21 --min-relevance 2 \
    --negatives hard --output-dir "$WORK/triplets/half-judged"
  half=$(newest "$WORK/triplets/half-judged" 'msmarco_triplets_*.pkl')
  for copies in 1 4; do
    includes=()
    for _ in $(seq "$copies"); do includes+=("$half"); done
    uv run preprocessing/generate_triplets.py --mode ict --dataset-path "$DL19/collection.tsv" "$DL21/collection.tsv" \
      --ict-per-passage 4 --include "${includes[@]}" --output-dir "$WORK/triplets/half-judged-x$copies"
  done
  models=()
  for setting in "ict-only ict4" "with-judged-x1 half-judged-x1" "with-judged-x4 half-judged-x4"; do
    read -r name triplets <<< "$setting"
    with_seeds "$name" 2 "$triplets" "$W5"
  done
  echo "== select: judged pairs of half the DL 2021 queries, evaluated on the other half"
  uv run evaluation/evaluate.py --collection "$DL21/collection.tsv" --queries "$split/dev/queries.dl21.tsv" \
    --qrels "$split/dev/qrels.dl21-passage.in-collection.txt" "${models[@]}" --systems two-tower,bm25,hybrid \
    --output-dir "$WORK/eval_select_judged" --overwrite
  uv run benchmarks/mean_over_seeds.py "$WORK/eval_select_judged/evaluation.json"

  # The CBOW window, with the chosen inverse-cloze setting (4 pseudo-queries per passage, 2 epochs, no judgment)
  # and all 53 DL 2021 queries again; window 5 is the x4-16w-e2 setting above.
  models=()
  for seed in "${SEEDS[@]}"; do models+=(--model "window-5-s$seed=$(model "select/x4-16w-e2-s$seed")"); done
  models+=(--model "window-5-soup=$(model select/x4-16w-e2-soup)")
  for window in 10 20 40; do
    [[ -f $WORK/cbow-w$window/msmarco_word2vec.pt ]] || cbow "$WORK/cbow-w$window" --window "$window" \
      --epochs "$CBOW_EPOCHS" --no-word-benchmarks
    with_seeds "window-$window" 2 ict4 "$WORK/cbow-w$window/msmarco_word2vec.pt"
  done
  echo "== select: the CBOW window, on DL 2021 (all 53 queries)"
  uv run evaluation/evaluate.py "${DL21_FILES[@]}" "${models[@]}" --systems two-tower,bm25,hybrid \
    --output-dir "$WORK/eval_select_window" --overwrite
  uv run benchmarks/mean_over_seeds.py "$WORK/eval_select_window/evaluation.json"
fi

# The self-training lever, against the recipe on the DL 2021 split (split_dl21; 3 seeds each, with the recipe's
# CBOW vectors): the recipe's training data there (judged pairs of the train half + 4 inverse-cloze
# pseudo-queries per passage of both pools) against the same plus self-training pairs: the 50K MS MARCO train
# queries labelled over both pools by the recipe's seed-42 model fused with BM25 (mining.py).
if want levers; then
  [[ -f $EMBEDDINGS ]] || cbow "$WORK/cbow" --window "$CBOW_WINDOW" --epochs "$CBOW_EPOCHS" --no-word-benchmarks
  [[ -d $split/dev ]] || split_dl21
  held_out=(--exclude-queries "$DL19/queries.dl19.tsv" "$split/dev/queries.dl21.tsv")
  pools=("$DL19/collection.tsv" "$DL21/collection.tsv")
  if [[ ${REUSE:-0} != 1 || -z $(newest "$WORK/triplets/lever-recipe" '*.pkl' 2>/dev/null) ]]; then
    rm -rf "$WORK/triplets/lever-"*
    uv run preprocessing/generate_triplets.py --dataset-path "$split/train" --split dl21 --min-relevance 2 \
      --negatives hard --output-dir "$WORK/triplets/lever-judged"
    uv run preprocessing/generate_triplets.py --mode ict --dataset-path "${pools[@]}" --ict-per-passage "$RECIPE_ICT" \
      --include "$(newest "$WORK/triplets/lever-judged" 'msmarco_triplets_*.pkl')" "${held_out[@]}" \
      --output-dir "$WORK/triplets/lever-recipe"
  fi
  models=()
  with_seeds lever-recipe "$RECIPE_EPOCHS" lever-recipe "$EMBEDDINGS"
  # SELF_TRAINING=0: the recipe row alone (a lever that changes the code, such as the tokeniser, is this row
  # run again at the new commit, into another WORK)
  if [[ ${SELF_TRAINING:-1} == 1 ]]; then
  if [[ ${REUSE:-0} != 1 || -z $(newest "$WORK/triplets/lever-selftrain" '*.pkl' 2>/dev/null) ]]; then
    uv run preprocessing/generate_triplets.py --mode pseudo-labels --dataset-path "${pools[@]}" \
      --queries "$DATA"/msmarco-queries/queries.train.*.tsv --label-model "$(model select/lever-recipe-s42)" \
      --include "$(newest "$WORK/triplets/lever-recipe" 'msmarco_triplets_*.pkl')" "${held_out[@]}" \
      --output-dir "$WORK/triplets/lever-selftrain"
  fi
  with_seeds lever-selftrain "$RECIPE_EPOCHS" lever-selftrain "$EMBEDDINGS"
  fi
  echo "== levers: trained with the judged pairs of half the DL 2021 queries, evaluated on the other half"
  uv run evaluation/evaluate.py --collection "$DL21/collection.tsv" --queries "$split/dev/queries.dl21.tsv" \
    --qrels "$split/dev/qrels.dl21-passage.in-collection.txt" "${models[@]}" --systems "$SYSTEMS" \
    --output-dir "$WORK/eval_levers"
  uv run benchmarks/mean_over_seeds.py "$WORK/eval_levers/evaluation.json"
fi

# Training settings against the recipe, on the same DL 2021 split, data and CBOW vectors as the levers step (run
# it first): the softmax's inverse temperature and the batch (more in-batch negatives). Each setting's flags
# come after the recipe's, so they win; 3 seeds each, and their soup. STEM=1 adds stemmed towers: CBOW vectors
# of Snowball stems (--stemmer english), the two-tower trained on them the recipe's way. KEYWORDS=SHARE adds
# keyword-style pseudo-queries (below), MINED=1 model-mined negatives for them.
# (The sweep that chose batch 1,024 ran with the recipe at 256 and SWEEP="scale-40 --scale 40;batch-1024
# --batch-size 1024"; against today's recipe, the same question is batch-256.)
SWEEP=${SWEEP-"scale-40 --scale 40;batch-256 --batch-size 256"}  # SWEEP="": none
if want sweep; then
  [[ -d $split/dev ]] || split_dl21
  models=()
  # SWEEP_BASE: the models of the recipe row (default the levers step's; sweep-NAME for a setting swept before,
  # or an ICT_SWEEP setting's NAME), SWEEP_TRIPLETS and SWEEP_EPOCHS the data and epochs each SWEEP setting
  # trains with (default lever-recipe, the levers step's, and the recipe's; lever-NAME for an ICT_SWEEP setting's)
  base=${SWEEP_BASE:-lever-recipe}
  for seed in "${SEEDS[@]}"; do models+=(--model "recipe-s$seed=$(model "select/$base-s$seed")"); done
  models+=(--model "recipe-soup=$(model "select/$base-soup")")
  IFS=';' read -r -a sweep <<< "$SWEEP"
  for setting in "${sweep[@]}"; do
    read -r name flags <<< "$setting"
    parts=()
    for seed in "${SEEDS[@]}"; do
      # shellcheck disable=SC2086 # the setting's flags are words
      train "select/sweep-$name-s$seed" "${SWEEP_EPOCHS:-$RECIPE_EPOCHS}" "${SWEEP_TRIPLETS:-lever-recipe}" "$EMBEDDINGS" \
        "${RECIPE[@]}" $flags --seed "$seed"
      models+=(--model "$name-s$seed=$(model "select/sweep-$name-s$seed")")
      parts+=("select/sweep-$name-s$seed")
    done
    average "select/sweep-$name-soup" "${parts[@]}"
    models+=(--model "$name-soup=$(model "select/sweep-$name-soup")")
  done
  # ICT_SWEEP="NAME EPOCHS FLAGS;...": other inverse-cloze triplets (the recipe's generate_triplets.py flags, then
  # FLAGS, which win), each trained the recipe's way for EPOCHS epochs; KEYWORDS=SHARE is
  # ICT_SWEEP="keywords-SHARE $RECIPE_EPOCHS --ict-keywords SHARE" (keyword-style pseudo-queries, --ict-keywords)
  ict_sweep=${ICT_SWEEP:-}
  [[ -n ${KEYWORDS:-} ]] && ict_sweep+="${ict_sweep:+;}keywords-$KEYWORDS $RECIPE_EPOCHS --ict-keywords $KEYWORDS"
  # MINED=1: the recipe's pseudo-queries with negatives mined by the recipe row's seed-42 model (its ranks 10-50,
  # --ict-mine-negatives: one ANCE round), the same cuts (same seed), only the negatives differ
  [[ ${MINED:-0} == 1 ]] && ict_sweep+="${ict_sweep:+;}mined $RECIPE_EPOCHS --ict-mine-negatives $(model "select/$base-s42")"
  IFS=';' read -r -a ict_settings <<< "$ict_sweep"
  for setting in "${ict_settings[@]}"; do
    read -r name epochs flags <<< "$setting"
    held_out=(--exclude-queries "$DL19/queries.dl19.tsv" "$split/dev/queries.dl21.tsv")
    if [[ ${REUSE:-0} != 1 || -z $(newest "$WORK/triplets/lever-$name" '*.pkl' 2>/dev/null) ]]; then
      rm -rf "$WORK/triplets/lever-$name"
      # shellcheck disable=SC2086 # the setting's flags are words
      uv run preprocessing/generate_triplets.py --mode ict --dataset-path "$DL19/collection.tsv" \
        "$DL21/collection.tsv" --ict-per-passage "$RECIPE_ICT" $flags \
        --include "$(newest "$WORK/triplets/lever-judged" 'msmarco_triplets_*.pkl')" "${held_out[@]}" \
        --output-dir "$WORK/triplets/lever-$name"
    fi
    with_seeds "$name" "$epochs" "lever-$name" "$EMBEDDINGS"
  done
  if [[ ${STEM:-1} == 1 ]]; then
    cbow "$WORK/cbow-stem" --window "$CBOW_WINDOW" --epochs "$CBOW_EPOCHS" --no-word-benchmarks --stemmer english
    with_seeds stemmed "$RECIPE_EPOCHS" lever-recipe "$WORK/cbow-stem/msmarco_word2vec.pt"
  fi
  echo "== sweep: training settings on the DL 2021 split, against the recipe"
  uv run evaluation/evaluate.py --collection "$DL21/collection.tsv" --queries "$split/dev/queries.dl21.tsv" \
    --qrels "$split/dev/qrels.dl21-passage.in-collection.txt" "${models[@]}" --systems "$SYSTEMS" \
    --output-dir "$WORK/eval_sweep${SWEEP_BASE:+-$SWEEP_BASE}" --overwrite
  uv run benchmarks/mean_over_seeds.py "$WORK/eval_sweep${SWEEP_BASE:+-$SWEEP_BASE}/evaluation.json" --baseline recipe
fi

if want fusion; then
  # The hybrid's --fusion-weight (the two-tower's share), chosen on the DL 2021 split with the levers step's
  # recipe seeds (its models must exist: run levers first); DL 2019 is not looked at here.
  [[ -d $split/dev ]] || split_dl21
  models=()
  for seed in "${SEEDS[@]}"; do models+=(--model "recipe-s$seed=$(model "select/lever-recipe-s$seed")"); done
  for weight in 0.3 0.4 0.5 0.6 0.7 0.8; do
    echo "== fusion weight $weight on the DL 2021 split"
    uv run evaluation/evaluate.py --collection "$DL21/collection.tsv" --queries "$split/dev/queries.dl21.tsv" \
      --qrels "$split/dev/qrels.dl21-passage.in-collection.txt" "${models[@]}" --systems hybrid \
      --fusion linear,rrf --fusion-weight "$weight" --output-dir "$WORK/eval_fusion_w$weight" --overwrite \
      | sed -n '/mean over seeds/,$p'
  done
fi

if want feedback; then
  # The -prf systems' feedback depth and weight (msmarco_search.search.hybrid.FeedbackRetriever), chosen on the DL 2021
  # split with the levers step's recipe seeds (SWEEP_BASE: another row's models); DL 2019 is not looked at here.
  # The choice: the best mean of the two-tower-prf and hybrid-linear-prf nDCG@10 means over the seeds.
  [[ -d $split/dev ]] || split_dl21
  models=()
  for seed in "${SEEDS[@]}"; do models+=(--model "recipe-s$seed=$(model "select/${SWEEP_BASE:-lever-recipe}-s$seed")"); done
  for depth in 3 5 10 20; do
    for weight in 0.5 1 2 4; do
      echo "== feedback depth $depth, weight $weight on the DL 2021 split"
      uv run evaluation/evaluate.py --collection "$DL21/collection.tsv" --queries "$split/dev/queries.dl21.tsv" \
        --qrels "$split/dev/qrels.dl21-passage.in-collection.txt" "${models[@]}" --systems two-tower-prf,hybrid-prf \
        --fusion linear --feedback-depth "$depth" --feedback-weight "$weight" \
        --output-dir "$WORK/eval_feedback_d${depth}_w$weight" --overwrite | sed -n '/mean over seeds/,$p'
    done
  done
fi

if want train; then
  # The recipe's model is what the README's main command makes, by the same workflow with the same inputs
  # (its own CBOW corpus, the judged + inverse-cloze triplets, 3 seeds and their average), into $WORK/models/main.
  rm -rf "$WORK/models/main" "$WORK/pipeline-data"
  bash scripts/run_pipeline.sh 50000 --dataset-path "$DL21" --split dl21 --evaluate-on "$DL19" \
    --extra-text "$DATA"/msmarco-queries/queries.train.*.tsv --output-dir "$WORK/models/main" \
    --data-dir "$WORK/pipeline-data"
fi
# the main job's model (the seeds' average, written last) and its seeds' models
main_model() { find "$WORK/models/main" -maxdepth 1 -name 'two_tower_model_*.pt' ! -name '*_seed*' | sort | tail -n 1; }
seed_model() { find "$WORK/models/main" -maxdepth 1 -name "two_tower_model_*_seed$1.pt" | sort | tail -n 1; }

if want evaluate; then
  echo "== evaluate on DL 2019: full ranking over the pool"
  uv run evaluation/evaluate.py "${DL19_FILES[@]}" --model "$(main_model)" --word-benchmarks \
    --output-dir "$WORK/eval_main"
  echo "== the recipe's 3 seeds alone and averaged, on DL 2019"
  models=(--model "recipe-soup=$(main_model)")
  for seed in "${SEEDS[@]}"; do models+=(--model "recipe-s$seed=$(seed_model "$seed")"); done
  uv run evaluation/evaluate.py "${DL19_FILES[@]}" "${models[@]}" --systems "$SYSTEMS" \
    --output-dir "$WORK/eval_seeds"
  uv run benchmarks/mean_over_seeds.py "$WORK/eval_seeds/evaluation.json"
fi

if want ablation; then
  # the ablation changes one choice at a time from the main job's model, so it starts from the same vectors
  # (the cbow-* rows use vectors trained on the corpus step's text instead)
  EMBEDDINGS=$WORK/models/main/msmarco_word2vec.pt
  # Each model changes one choice of the recipe (flags given later win over the recipe's) and is trained once,
  # with seed 42: compare it with the recipe's seed-42 model (the recipe itself averages 3 seeds).
  cbow "$WORK/cbow-5-epochs" --window "$CBOW_WINDOW" --epochs 5 --no-word-benchmarks
  train previous-recipe 8 both1 "$EMBEDDINGS" "${RECIPE[@]}"
  train judged-only 8 dl21 "$EMBEDDINGS" "${RECIPE[@]}" --validation-fraction 0.1
  train ict-only "$EPOCHS" ict4 "$EMBEDDINGS" "${RECIPE[@]}"
  train separate-towers "$EPOCHS" both "$EMBEDDINGS" --init-token-weights idf --learning-rate 1e-4 --batch-size 256
  train weights-start-at-1 "$EPOCHS" both "$EMBEDDINGS" "${RECIPE[@]}" --init-token-weights one
  train no-token-weights "$EPOCHS" both "$EMBEDDINGS" "${RECIPE[@]}" --no-token-weights
  train frozen-embeddings "$EPOCHS" both "$EMBEDDINGS" "${RECIPE[@]}" --freeze-embeddings
  train triplet-loss "$EPOCHS" both "$EMBEDDINGS" "${RECIPE[@]}" --loss triplet
  train dense-lr-1e-3 "$EPOCHS" both "$EMBEDDINGS" "${RECIPE[@]}" --learning-rate 1e-3
  train cbow-5-epochs "$EPOCHS" both "$WORK/cbow-5-epochs/msmarco_word2vec.pt" "${RECIPE[@]}"
  train cbow-window-5 "$EPOCHS" both "$WORK/cbow-w5/msmarco_word2vec.pt" "${RECIPE[@]}"
  train 4-epochs 4 both "$EMBEDDINGS" "${RECIPE[@]}"
  models=(--model "recipe=$(main_model)" --model "recipe-seed-42=$(seed_model 42)")
  for name in previous-recipe judged-only ict-only separate-towers weights-start-at-1 no-token-weights \
              frozen-embeddings triplet-loss dense-lr-1e-3 cbow-5-epochs cbow-window-5 4-epochs; do
    models+=(--model "$name=$(model "$name")")
  done
  echo "== evaluate the ablation on DL 2019"
  uv run evaluation/evaluate.py "${DL19_FILES[@]}" "${models[@]}" --systems two-tower,bm25,hybrid \
    --output-dir "$WORK/eval_ablation"
fi
