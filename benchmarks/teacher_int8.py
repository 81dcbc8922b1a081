"""The teacher in int8 against float32: what dynamic int8 quantization of its linear layers saves in encoding
time, and what it costs in its own ranking quality, on one collection with judged queries.

    uv run benchmarks/teacher_int8.py ../shared/models/all-MiniLM-L6-v2 \
        --collection ../shared/data/msmarco-v2-trec-dl-2021/collection.tsv \
        --queries ../shared/data/msmarco-v2-trec-dl-2021/queries.dl21.tsv \
        --qrels ../shared/data/msmarco-v2-trec-dl-2021/qrels.dl21-passage.in-collection.txt

Encodes the collection and the queries with each (``torch.ao.quantization.quantize_dynamic`` on every
``nn.Linear``, qint8 weights), ranks the whole collection for each query by cosine, and prints encoding
passages/s, nDCG@10 and R@100 of each, and the paired t-test and Wilcoxon p of int8 against float32. The int8
teacher is a candidate for a cheaper cold cache only where its quality stays within 0.005 of float32.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np

from msmarco_search.evaluation.metrics import paired_tests, score_run, score_run_per_query
from msmarco_search.io.msmarco_files import read_collection, read_qrels, read_queries
from msmarco_search.teacher.model import Teacher, load_teacher


def ranking(teacher: Teacher, ids: list[str], texts: list[str], queries: dict[str, str],
            depth: int = 100) -> tuple[dict[str, dict[str, float]], float]:
    """The run of ``teacher`` over the collection (top ``depth`` by cosine) and its passages encoded a second."""
    started = time.perf_counter()
    passages = teacher.encode(texts, desc="passages")
    seconds = time.perf_counter() - started
    query_vectors = teacher.encode(list(queries.values()), desc="queries")
    scores = query_vectors @ passages.T
    top = np.argsort(-scores, axis=1)[:, :depth]
    run = {qid: {ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(queries)}
    return run, len(texts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", help="a sentence-transformers model folder (or hub name)")
    parser.add_argument("--collection", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("--qrels", type=Path, required=True)
    args = parser.parse_args()
    import torch

    rows = list(read_collection(args.collection))
    ids, texts = [pid for pid, _ in rows], [text for _, text in rows]
    qrels = read_qrels(args.qrels)
    queries = {qid: text for qid, text in read_queries(args.queries).items() if qid in qrels}
    teacher = load_teacher(args.teacher)
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(teacher.model), {torch.nn.Linear},
                                                       dtype=torch.qint8)
    teachers = {"float32": teacher, "int8": Teacher(quantized, teacher.name, f"{teacher.identity}-int8")}
    results = {name: ranking(each, ids, texts, queries) for name, each in teachers.items()}
    print(f"{len(texts):,} passages, {len(queries)} judged queries; {torch.get_num_threads()} threads")
    print(f"{'teacher':<8} {'passages/s':>10} {'nDCG@10':>8} {'R@100':>7}")
    per_query = {}
    for name, (run, rate) in results.items():
        scores = score_run(qrels, run, metrics=("nDCG@10", "R@100"))
        per_query[name] = score_run_per_query(qrels, run, metrics=("nDCG@10",))["nDCG@10"]
        print(f"{name:<8} {rate:>10.1f} {scores['nDCG@10']:>8.4f} {scores['R@100']:>7.4f}")
    tests = paired_tests(per_query["int8"], per_query["float32"])
    print(f"int8 - float32 nDCG@10: {tests['difference']:+.4f} (t-test p {tests['t_test_p']:.3f}, "
          f"Wilcoxon p {tests['wilcoxon_p']:.3f}); speed {results['int8'][1] / results['float32'][1]:.2f}x")


if __name__ == "__main__":
    main()
