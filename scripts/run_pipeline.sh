#!/usr/bin/env bash
# The main job: CBOW vectors, triplets, the two-tower models of 3 seeds and their average, the index of the
# evaluation collection, and the scoreboard against BM25 (msmarco_search/cli/pipeline.py; --help lists the
# flags). A teacher (--teacher FOLDER or hub name; --teacher none: off) labels the triplets, is distilled into the
# two-tower and shows as a reference row.
#
#   scripts/run_pipeline.sh [SAMPLE_SIZE] [--dataset-path PATH... --split SPLIT] [--evaluate-on PATH...] [...]
#
# PYTHON overrides the interpreter (default: uv run python, which installs the project first).
set -euo pipefail
cd "$(dirname "$0")/.."
# the job runs the package as a module; its messages name the repository's scripts, which this user runs
export MSMARCO_SEARCH_SHOWN_AS=script
if [[ -n ${PYTHON:-} ]]; then
  exec "$PYTHON" -m msmarco_search pipeline "$@"
fi
exec uv run python -m msmarco_search pipeline "$@"
