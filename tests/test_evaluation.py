"""Evaluation: metrics on hand-checked rankings, fusion, the evaluation script end to end in both formats,
the inverse-cloze triplets mode and word-embedding benchmarks."""

from __future__ import annotations

import json
import math

import ir_measures
import numpy as np
import pytest
import torch
from conftest import (
    SHARED_DATA,
    TRAIN_SCRIPT,
    TRIPLETS_SCRIPT,
    assert_one_line_error,
    cli,
    run_main,
    run_script,
    write_tsv_folder,
)

from msmarco_search.data.records import text_id
from msmarco_search.data.triplets import load_triplets, metadata_path
from msmarco_search.data.vocab import Vocabulary
from msmarco_search.embeddings.word_benchmarks import word_embedding_quality
from msmarco_search.evaluation.metrics import score_run, score_run_per_query
from msmarco_search.io.runs import write_run
from msmarco_search.search.fusion import fuse_runs, linear_fusion, reciprocal_rank_fusion

EVALUATE_SCRIPT = "evaluation/evaluate.py"
AVERAGE_SCRIPT = "training/average_two_tower_models.py"

# q1 is judged d1:3, d2:1, d3:2 and the run ranks d2, d3, d9 (d1 is never retrieved).
QRELS = {"q1": {"d1": 3, "d2": 1, "d3": 2}, "q2": {"e1": 2, "e2": 0}}
RUN = {"q1": {"d2": 3.0, "d3": 2.0, "d9": 1.0}, "q2": {"e2": 2.0, "e1": 1.0}}


def test_metrics_on_a_hand_checked_ranking():
    q1 = score_run({"q1": QRELS["q1"]}, {"q1": RUN["q1"]})
    # DCG = 1/log2(2) + 2/log2(3); ideal = 3/log2(2) + 2/log2(3) + 1/log2(4)
    assert q1["nDCG@10"] == pytest.approx((1 + 2 / math.log2(3)) / (3 + 2 / math.log2(3) + 0.5))
    assert q1["MRR@10"] == pytest.approx(0.5)  # d2 (grade 1) is not relevant at threshold 2; d3 at rank 2 is
    assert q1["R@100"] == pytest.approx(0.5)  # d3 found, d1 not
    assert q1["MAP"] == pytest.approx(0.25)  # precision 1/2 at d3, d1 never found: (1/2) / 2
    lenient = score_run({"q1": QRELS["q1"]}, {"q1": RUN["q1"]}, threshold=1)
    assert lenient["MRR@10"] == pytest.approx(1.0) and lenient["R@100"] == pytest.approx(2 / 3)

    both = score_run(QRELS, RUN)
    assert both["MRR@10"] == pytest.approx((0.5 + 0.5) / 2)  # q2: e1 at rank 2
    per_query = score_run_per_query(QRELS, RUN)
    assert per_query["MRR@10"] == {"q1": pytest.approx(0.5), "q2": pytest.approx(0.5)}
    assert both["nDCG@10"] == pytest.approx(np.mean(list(per_query["nDCG@10"].values())))


def test_fusion_by_hand():
    fused = dict(reciprocal_rank_fusion([{"a": 3.0, "b": 2.0, "c": 1.0}, {"c": 9.0, "a": 1.0}], k=60))
    assert fused == {"a": pytest.approx(1 / 61 + 1 / 62), "b": pytest.approx(1 / 62),
                     "c": pytest.approx(1 / 63 + 1 / 61)}
    mixed = dict(linear_fusion([{"a": 10.0, "b": 0.0, "c": 5.0}, {"b": 4.0, "c": 2.0}], weights=[0.25, 0.75]))
    assert mixed == {"a": pytest.approx(0.25), "b": pytest.approx(0.75), "c": pytest.approx(0.125)}
    run = fuse_runs({"q": {"a": 3.0, "b": 2.0}}, {"q": {"b": 5.0, "c": 1.0}}, "rrf", depth=2)
    assert list(run["q"]) == ["b", "a"]  # b is first in one list and second in the other


def test_p_values_on_a_hand_made_pair_of_runs():
    from scipy.stats import t as student

    from msmarco_search.evaluation.metrics import significance

    qrels = {f"q{i}": {"r": 2} for i in range(4)}
    first = {q: {"r": 9.0, "x": 1.0} for q in qrels}  # the relevant passage first everywhere: RR 1
    # the baseline ranks it 1st, 2nd, 4th and 5th: RR 1, 1/2, 1/4, 1/5
    baseline = {q: {"r": 1.0, **{f"x{j}": 2.0 + j for j in range(rank)}} for q, rank in
                zip(qrels, (0, 1, 3, 4), strict=True)}
    per_query = {name: score_run_per_query(qrels, run, 2, ["MRR@10"]) for name, run in
                 (("system", first), ("baseline", baseline))}
    tests = significance(per_query, "baseline", ["MRR@10"])["system"]["MRR@10"]
    differences = np.array([0.0, 0.5, 0.75, 0.8])
    t_value = differences.mean() / (differences.std(ddof=1) / 2)  # paired t on 4 queries, 3 degrees of freedom
    assert tests["queries"] == 4 and tests["difference"] == pytest.approx(differences.mean())
    assert tests["t_test_p"] == pytest.approx(2 * student.sf(t_value, 3))
    # Wilcoxon drops the zero difference: 3 positive ranks, exact two-sided p = 2 / 2**3
    assert tests["wilcoxon_p"] == pytest.approx(0.25)
    same = significance({"a": per_query["baseline"], "b": per_query["baseline"]}, "b", ["MRR@10"])
    assert same["a"]["MRR@10"]["t_test_p"] == 1.0 == same["a"]["MRR@10"]["wilcoxon_p"]


def test_run_file_is_trec_format_and_round_trips(tmp_path):
    path = write_run(RUN, tmp_path / "run.trec", "my system")
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 d2 1 3.0 my_system"
    assert [line.split()[2] for line in lines] == ["d2", "d3", "d9", "e2", "e1"]
    again = {}
    for doc in ir_measures.read_trec_run(str(path)):
        again.setdefault(doc.query_id, {})[doc.doc_id] = doc.score
    assert score_run(QRELS, again) == score_run(QRELS, RUN)


def _report(out):
    return json.loads((out / "evaluation.json").read_text())


def _check_run_files(report, task, qrels_fn):
    for name, path in report["tasks"][task]["run_files"].items():
        run = {}
        for doc in ir_measures.read_trec_run(path):
            run.setdefault(doc.query_id, {})[doc.doc_id] = doc.score
        metrics = report["tasks"][task]["metrics"][name]
        assert score_run(qrels_fn(), run, report["tasks"][task]["relevance_threshold"], list(metrics)) == \
            pytest.approx(metrics), name


def test_evaluation_script_on_rows(trained_pipeline, tmp_path, corpus, capsys):
    out = tmp_path / "eval"
    result = run_main(capsys, EVALUATE_SCRIPT, "--model", trained_pipeline["model"], "--embeddings",
                      trained_pipeline["embeddings"], "--dataset-path", trained_pipeline["rows"], "--output-dir", out,
                      "--max-queries", "120", cwd=tmp_path)
    assert "=== rerank:" in result.stdout and "=== full:" in result.stdout and "random" in result.stdout
    report = _report(out)
    rerank, full = report["tasks"]["rerank"], report["tasks"]["full"]
    systems = {"two-tower", "bm25", "cbow-mean", "cbow-idf", "hybrid-rrf", "hybrid-linear", "two-tower-prf",
               "hybrid-rrf-prf", "hybrid-linear-prf"}
    assert set(rerank["metrics"]) == systems | {"random", "first-stage"} and set(full["metrics"]) == systems
    assert rerank["baseline"] == "first-stage" and full["baseline"] == "bm25"
    assert set(full["significance"]) == systems - {"bm25"}
    assert set(full["significance"]["two-tower"]["nDCG@10"]) == {"queries", "difference", "t_test_p", "wilcoxon_p"}
    assert "p: paired t-test" in result.stdout
    assert rerank["queries"] == full["queries"] == 120 and rerank["relevance_threshold"] == 1
    assert report["systems"]["bm25"] == {"kind": "BM25Retriever", "k1": 0.9, "b": 0.4,
                                        "stemmer": "english"}
    assert report["systems"]["hybrid-linear-prf"] == {"kind": "FeedbackRetriever", "dense": "two-tower",
                                                      "source": "hybrid-linear", "depth": 3, "weight": 2.0}
    # the fixture's queries share no word with their passages: only the trained model can find them
    assert rerank["metrics"]["two-tower"]["MRR@10"] > 0.9 > rerank["metrics"]["random"]["MRR@10"] + 0.3
    assert full["metrics"]["two-tower"]["nDCG@10"] > full["metrics"]["cbow-idf"]["nDCG@10"] + 0.3
    assert set(rerank["per_query"]["two-tower"]["MRR@10"]) == {q for q, _, _ in corpus.queries[:120]}
    # these are the model's own training queries: the table says so, and the JSON names them
    assert "LEAK: 120 of the 120 evaluation queries are in two-tower's training triplets" in result.stdout
    assert full["training_overlap"]["two-tower"]["queries"] == 120

    qrels, pool = {}, set()
    for line in trained_pipeline["rows"].read_text().splitlines()[:120]:
        row = json.loads(line)
        texts, selected = row["passages"]["passage_text"], row["passages"]["is_selected"]
        qrels[str(row["query_id"])] = {text_id(t): 1 for t, s in zip(texts, selected, strict=True) if s}
        pool |= {text_id(t) for t in texts}
    _check_run_files(report, "rerank", lambda: qrels)
    _check_run_files(report, "full", lambda: qrels)
    assert full["passages"] == len(pool)
    lines = (out / "run.full.two-tower.trec").read_text().splitlines()
    assert len(lines) == 120 * len(pool)  # the pool is smaller than --run-depth: every passage ranked
    assert lines[0].split()[1] == "Q0" and lines[0].split()[3] == "1" and lines[0].endswith(" two-tower")


def test_evaluation_script_on_official_files(trained_pipeline, tmp_path, corpus, capsys):
    folder = write_tsv_folder(corpus, tmp_path / "tsv", split="dev")
    # graded judgments: grade 1 on the first relevant passage of each query, which threshold 2 ignores
    graded = []
    for number, line in enumerate((folder / "qrels.dev.tsv").read_text().splitlines()):
        qid, _, pid, _ = line.split()
        graded.append(f"{qid} 0 {pid} {2 if number % 2 else 1}\n")
    (folder / "qrels.dev.tsv").write_text("".join(graded))
    args = ["--model", f"first={trained_pipeline['model']}", "--model", trained_pipeline["model"], "--embeddings",
            trained_pipeline["embeddings"], "--collection", folder / "collection.tsv", "--queries",
            folder / "queries.dev.tsv", "--qrels", folder / "qrels.dev.tsv", "--systems", "hybrid,cbow",
            "--fusion", "linear", "--fusion-weight", "0.7"]
    run_main(capsys, EVALUATE_SCRIPT, *args, "--output-dir", tmp_path / "full", cwd=tmp_path)
    report = _report(tmp_path / "full")
    metrics = report["tasks"]["full"]["metrics"]
    model_stem = trained_pipeline["model"].stem.removeprefix("two_tower_model_")
    tower = "two-tower[first]"
    assert set(metrics) == {tower, f"two-tower[{model_stem}]", "bm25", "cbow-mean", "cbow-idf",
                            "hybrid-linear[first]", f"hybrid-linear[{model_stem}]"}
    assert report["systems"]["hybrid-linear[first]"]["weight"] == 0.7
    assert metrics[tower] == metrics[f"two-tower[{model_stem}]"]  # the same model twice
    assert set(metrics[tower]) == {"nDCG@10", "MRR@10", "R@100", "R@1000", "MAP"}
    assert metrics[tower]["nDCG@10"] > metrics["bm25"]["nDCG@10"] + 0.3
    assert report["tasks"]["full"]["passages"] == len(corpus.passages)
    assert report["data"]["format"] == "official"
    qrels = {}
    for line in graded:
        qid, _, pid, grade = line.split()
        qrels.setdefault(qid, {})[pid] = int(grade)
    _check_run_files(report, "full", lambda: qrels)

    run_main(capsys, EVALUATE_SCRIPT, *args, "--candidates", folder / "top1000.dev.tsv", "--relevance-threshold", "1",
             "--output-dir", tmp_path / "rerank", cwd=tmp_path)
    report = _report(tmp_path / "rerank")
    rerank = report["tasks"]["rerank"]
    assert rerank["relevance_threshold"] == 1 and "random" in rerank["metrics"]
    # the first stage as given is a row, and the baseline: its run is the candidates file's order
    assert rerank["baseline"] == "first-stage" and rerank["candidates"] == 6 * len(corpus.queries)
    given: dict[str, list[str]] = {}
    for line in (folder / "top1000.dev.tsv").read_text().splitlines():
        qid, pid = line.split("\t")[:2]
        given.setdefault(qid, []).append(pid)
    written: dict[str, list[str]] = {}
    for line in (tmp_path / "rerank" / "run.rerank.first-stage.trec").read_text().splitlines():
        written.setdefault(line.split()[0], []).append(line.split()[2])
    assert written == given
    order_run = {qid: {pid: -rank for rank, pid in enumerate(pids)} for qid, pids in given.items()}
    assert rerank["metrics"]["first-stage"] == pytest.approx(
        score_run(qrels, order_run, 1, list(rerank["metrics"]["first-stage"])))
    assert set(rerank["significance"]) == set(rerank["metrics"]) - {"first-stage", "random"}
    lines = (tmp_path / "rerank" / "run.rerank.bm25.trec").read_text().splitlines()
    assert len(lines) == 6 * len(corpus.queries)  # six candidates per query, all of them scored


def test_evaluation_script_errors_are_one_line(tmp_path, trained_pipeline):
    missing = run_script(EVALUATE_SCRIPT, "--collection", tmp_path / "c.tsv", "--systems", "bm25", cwd=tmp_path,
                         check=False)
    no_model = run_script(EVALUATE_SCRIPT, "--systems", "hybrid", "--dataset-path", trained_pipeline["rows"],
                          cwd=tmp_path, check=False)
    for result, words in [(missing, "--collection, --queries and --qrels"), (no_model, "--model")]:
        assert result.returncode == 2 and words in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert "usage:" in run_script(EVALUATE_SCRIPT, "--help", cwd=tmp_path).stdout


def test_inverse_cloze_triplets_from_a_bare_collection(tmp_path, tsv_folder, trained_pipeline, corpus, capsys):
    out = tmp_path / "ict"
    run_main(capsys, TRIPLETS_SCRIPT, "--mode", "ict", "--dataset-path", tsv_folder / "collection.tsv", "--seed", "5",
             "--include", trained_pipeline["triplets"], "--output-dir", out, cwd=tmp_path)
    path = next(out.glob("msmarco_triplets_ict_*.pkl"))
    triplets = load_triplets(path)
    metadata = json.loads(metadata_path(path).read_text())
    included = len(load_triplets(trained_pipeline["triplets"]))
    passages = {pid: text for pid, text, _ in corpus.passages}
    assert metadata["mode"] == "ict" and metadata["passages_read"] == len(passages)
    assert metadata["triplets_made"] == len(passages) == len(triplets) - included
    cut = 0
    for index in range(metadata["triplets_made"]):
        query, positive, pid = triplets.queries[index], triplets.positives[index], triplets.positive_ids[index]
        original = passages[pid]
        words = original.split()
        assert triplets.query_ids[index] == f"ict:{pid}:0"
        assert query in original and 3 <= len(query.split()) <= 16
        assert triplets.negatives[index] == passages[triplets.negative_ids[index]] != original
        if positive != original:  # the pseudo-query was cut out of its passage
            cut += 1
            assert len(positive.split()) == len(words) - len(query.split())
    assert 0.75 * len(passages) <= cut < len(passages)  # about 90 % cut, 10 % kept
    assert triplets.queries[-included:] == load_triplets(trained_pipeline["triplets"]).queries


def test_keyword_pseudo_queries_are_rare_words_of_their_passage(tmp_path, tsv_folder, corpus, capsys):
    """--ict-keywords SHARE: that share of pseudo-queries is 3-6 distinct words of the passage, drawn by IDF (so
    the passages' topic words, never the filler every passage shares), and the positive is the whole passage."""
    from conftest import assert_usage_error, cli

    from msmarco_search.core.text import tokenize

    status, out, err = cli(capsys, TRIPLETS_SCRIPT, "--mode", "ict", "--dataset-path", tsv_folder / "collection.tsv",
                           "--ict-keywords", "1", "--ict-per-passage", "2", "--output", tmp_path / "k.pkl",
                           "--data-dir", tmp_path / "data")
    assert status == 0 and "0 span and 240 keyword pseudo-queries" in out, (out, err)
    triplets = load_triplets(tmp_path / "k.pkl")
    passages = {pid: text for pid, text, _ in corpus.passages}
    assert len(triplets) == 2 * len(passages)
    drawn, uniform = [], []
    for query, pid, positive in zip(triplets.queries, triplets.positive_ids, triplets.positives, strict=True):
        words, own = query.split(), list(dict.fromkeys(tokenize(passages[pid])))
        assert positive == passages[pid] and 3 <= len(words) <= 6 and len(set(words)) == len(words)
        assert words == [w for w in own if w in words]  # the passage's own words, in its order
        drawn.append(sum(word.startswith("doc") for word in words) / len(words))
        uniform.append(sum(word.startswith("doc") for word in own) / len(own))
    # the topic words (each in a twelfth of the passages) are drawn more often than a uniform draw would
    assert sum(drawn) / len(drawn) > sum(uniform) / len(uniform) + 0.1
    assert_usage_error(cli(capsys, TRIPLETS_SCRIPT, "--mode", "ict", "--dataset-path", tsv_folder /
                           "collection.tsv", "--ict-keywords", "1.5", "--output", tmp_path / "x.pkl"),
                       "argument --ict-keywords: must lie between 0 and 1, got 1.5")


def test_pseudo_labels_label_real_style_queries_where_model_and_bm25_agree(tmp_path, tsv_folder, trained_pipeline,
                                                                            corpus, capsys):
    passages = {pid: (text, topic) for pid, text, topic in corpus.passages}
    # queries in the passages' own words (so BM25 finds them), one query kept for evaluation, one of no known word
    queries = [(f"q{pid}", " ".join(text.lower().rstrip(".").split()[:8])) for pid, (text, _) in passages.items()]
    queries_file = tmp_path / "queries.train.tsv"
    queries_file.write_text("".join(f"{qid}\t{text}\n" for qid, text in queries) + "nowhere\tzzqx wwvy\n")
    held_out = tmp_path / "queries.eval.tsv"
    held_out.write_text(f"e1\t{queries[0][1].upper()}\n")
    out = tmp_path / "labelled.pkl"
    run_main(capsys, TRIPLETS_SCRIPT, "--mode", "pseudo-labels", "--dataset-path", tsv_folder / "collection.tsv",
             "--queries", queries_file, "--label-model", trained_pipeline["model"], "--pseudo-agree-depth", "9",
             "--pseudo-negative-ranks", "10", "30", "--exclude-queries", held_out, "--output", out, cwd=tmp_path)
    triplets, metadata = load_triplets(out), json.loads(metadata_path(out).read_text())
    assert metadata["mode"] == "pseudo-labels" and metadata["queries_read"] == len(queries)  # held out: not read
    assert 0 < metadata["pseudo_labelled"] == len(triplets) <= len(queries) - 1
    asked = dict(queries)
    for qid, query, pid, positive, nid, negative in zip(*triplets.columns().values(), strict=True):
        assert qid.startswith("pl:") and asked[qid[3:]] == query and qid != f"pl:{queries[0][0]}"
        assert positive == passages[pid][0] and negative == passages[nid][0] and nid != pid
    # the hybrid's first passage of a query cut from a passage is mostly that passage's topic
    same = sum(passages[pid][1] == passages[qid[4:]][1] for qid, pid in zip(triplets.query_ids,
                                                                           triplets.positive_ids, strict=True))
    assert same >= 0.8 * len(triplets)
    bad = run_main(capsys, TRIPLETS_SCRIPT, "--mode", "pseudo-labels", "--dataset-path", tsv_folder / "collection.tsv",
                   "--queries", queries_file, cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "--label-model" in bad.stderr


def test_ict_negatives_mined_with_a_model_are_its_near_misses(tmp_path, tsv_folder, trained_pipeline, capsys):
    """--ict-mine-negatives keeps the pseudo-queries and positives and draws each negative from the model's
    ranks FIRST-LAST for that pseudo-query, never the positive's own passage."""
    from msmarco_search.io.msmarco_files import read_collection
    from msmarco_search.search.dense import TwoTowerRetriever
    from msmarco_search.search.retrieval import PassagePool
    from msmarco_search.training.model_file import load_model

    collection = tsv_folder / "collection.tsv"
    plain, mined = tmp_path / "plain.pkl", tmp_path / "mined.pkl"
    run_main(capsys, TRIPLETS_SCRIPT, "--mode", "ict", "--dataset-path", collection, "--ict-per-passage", "2",
             "--output", plain, cwd=tmp_path)
    run_main(capsys, TRIPLETS_SCRIPT, "--mode", "ict", "--dataset-path", collection, "--ict-per-passage", "2",
             "--ict-mine-negatives", trained_pipeline["model"], "--pseudo-negative-ranks", "2", "6", "--output", mined,
             cwd=tmp_path)
    before, after = load_triplets(plain), load_triplets(mined)
    metadata = json.loads(metadata_path(mined).read_text())
    assert (after.query_ids, after.queries, after.positives) == (before.query_ids, before.queries, before.positives)
    assert metadata["triplets_mined"] + metadata["triplets_kept_as_they_were"] == len(after)
    assert metadata["triplets_mined"] >= 0.9 * len(after)
    assert metadata["negative_strategy"].startswith("mined: ranks 2-6")
    passages = dict(read_collection(collection))
    retriever = TwoTowerRetriever.from_file(trained_pipeline["model"])
    pool = PassagePool(list(passages), list(passages.values()))
    retriever.prepare(pool)
    hits = retriever.search(after.queries, 6)
    changed = 0
    for i, ranked in enumerate(hits):
        assert after.negative_ids[i] != after.positive_ids[i]
        if after.negative_ids[i] != before.negative_ids[i]:
            changed += 1
            assert after.negative_ids[i] in {pool.pid(p) for p, _ in ranked[1:6]}, i
            assert after.negatives[i] == passages[after.negative_ids[i]]
    assert changed >= 0.8 * len(after)
    assert metadata["negative_model_id"] == load_model(trained_pipeline["model"]).metadata["model_id"]
    assert metadata["arguments"]["pseudo_negative_ranks"] == [2, 6]
    refused = run_main(capsys, TRIPLETS_SCRIPT, "--dataset-path", collection, "--ict-mine-negatives",
                       trained_pipeline["model"], cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "--ict-mine-negatives goes with --mode ict" in refused.stderr
    for model, ranks, message in ((trained_pipeline["model"], ["900", "990"], "there are only"),
                                  (tmp_path / "missing.pt", ["2", "6"], "missing.pt")):
        refused = run_main(capsys, TRIPLETS_SCRIPT, "--mode", "ict", "--dataset-path", collection,
                           "--ict-mine-negatives", model, "--pseudo-negative-ranks", *ranks, "--output",
                           tmp_path / "x.pkl", cwd=tmp_path, check=False)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.pkl").exists()


def test_word_benchmarks_through_gensim():
    # athens:greece :: baghdad:iraq holds exactly in these vectors, in both directions
    words = ["athens", "greece", "baghdad", "iraq", "zzzfiller"]
    vectors = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]],
                           dtype=torch.float32)
    matrix = torch.cat([torch.zeros(2, 4), vectors])
    result = word_embedding_quality(matrix, Vocabulary.from_words(words))
    analogies = result["analogies"]
    assert analogies["total"] == 19544 and analogies["in_vocabulary"] >= 2
    assert analogies["accuracy"] == pytest.approx(1.0)
    assert analogies["share_in_vocabulary"] == pytest.approx(analogies["in_vocabulary"] / 19544)
    assert result["wordsim353"]["spearman"] is None and result["wordsim353"]["share_in_vocabulary"] == 0.0


@pytest.mark.real_data
@pytest.mark.skipif(not (SHARED_DATA / "msmarco-trec-dl-2019").is_dir(), reason="../shared/data is absent")
def test_bm25_on_dl19_matches_the_published_pool_figures(tmp_path):
    data = SHARED_DATA / "msmarco-trec-dl-2019"
    files = ["--collection", data / "collection.tsv", "--queries", data / "queries.dl19.tsv", "--qrels",
             data / "qrels.dl19-passage.in-collection.txt"]
    run_script(EVALUATE_SCRIPT, "--systems", "bm25", *files, "--output-dir", tmp_path / "stemmed", cwd=tmp_path)
    run_script(EVALUATE_SCRIPT, "--systems", "bm25", *files, "--bm25-stemmer", "none", "--output-dir",
               tmp_path / "plain", cwd=tmp_path)
    stemmed = _report(tmp_path / "stemmed")["tasks"]["full"]["metrics"]["bm25"]
    plain = _report(tmp_path / "plain")["tasks"]["full"]["metrics"]["bm25"]
    # Snowball-stemmed BM25 (k1 0.9, b 0.4) scores about 0.474 nDCG@10 on this pool, 0.435 without
    assert stemmed["nDCG@10"] == pytest.approx(0.474, abs=0.01)
    assert plain["nDCG@10"] == pytest.approx(0.435, abs=0.01)
    # the issue quotes about MRR@10 0.567, R@100 0.56 for the unstemmed BM25
    assert plain["MRR@10"] == pytest.approx(0.567, abs=0.01)
    assert plain["R@100"] == pytest.approx(0.56, abs=0.01)


@pytest.mark.real_data
@pytest.mark.skipif(not (SHARED_DATA / "msmarco-trec-dl-2019").is_dir(), reason="../shared/data is absent")
def test_row_layout_evaluation_on_real_ms_marco_rows(tmp_path):
    rows = SHARED_DATA / "msmarco-trec-dl-2019" / "derived" / "hf_rows.bm25top10.dl19.jsonl"
    run_script(EVALUATE_SCRIPT, "--dataset-path", rows, "--systems", "bm25", "--output-dir", tmp_path, cwd=tmp_path)
    report = _report(tmp_path)
    qrels: dict[str, dict[str, int]] = {}
    for line in rows.read_text().splitlines():
        row = json.loads(line)
        for pid, selected in zip(row["passage_ids"], row["passages"]["is_selected"], strict=True):
            qrels.setdefault(str(row["query_id"]), {})[str(pid)] = int(selected)
    # queries without a selected passage cannot be scored, and are left out (as TREC tools do)
    qrels = {qid: grades for qid, grades in qrels.items() if any(grades.values())}
    for task in ("rerank", "full"):
        assert report["tasks"][task]["queries"] == len(qrels) == 41
        _check_run_files(report, task, lambda: qrels)
    rerank = report["tasks"]["rerank"]["metrics"]
    # BM25 re-ranks BM25's own top 10 (re-scored on these 410 passages) better than shuffling them
    assert rerank["bm25"]["MRR@10"] > rerank["random"]["MRR@10"]


def test_training_validates_keeps_the_best_model_and_plots_its_log(trained_pipeline, tmp_path, capsys):
    from msmarco_search.evaluation.validation import Validator, split_validation
    from msmarco_search.training.model_file import load_model

    result = run_main(capsys, TRAIN_SCRIPT, trained_pipeline["triplets"], "--embeddings",
                      trained_pipeline["embeddings"], "--epochs", "3", "--batch-size", "32", "--learning-rate", "3e-3",
                      "--validation-queries", "24", "--validate-every", "4", "--seed", "7", "--output-dir", tmp_path,
                      cwd=tmp_path)
    assert "Validation after epoch 3: MRR@10" in result.stdout
    model_path = next(tmp_path.glob("two_tower_model_*.pt"))
    log = json.loads(model_path.with_name(model_path.stem + "_training_log.json").read_text())
    validation = log["validation"]
    assert validation["queries"] == 24 and validation["metric"] == "MRR@10"
    ends = [e for e in validation["entries"] if e["end_of_epoch"]]
    inner = [e for e in validation["entries"] if not e["end_of_epoch"]]
    assert [e["epoch"] for e in ends] == [1, 2, 3]
    assert inner and all(e["step"] % 4 == 0 for e in inner)
    assert validation["best"]["MRR@10"] == max(e["MRR@10"] for e in validation["entries"])
    assert log["num_triplets"] == len(load_triplets(trained_pipeline["triplets"]))
    png = model_path.with_name(model_path.stem + "_training_log.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    # the saved model is the best one: scoring it on the same held-out queries gives the logged best
    model = load_model(model_path)
    _, held_out = split_validation(load_triplets(trained_pipeline["triplets"]), count=24, seed=7)
    assert held_out.query_ids == sorted({e for e in held_out.task.queries})
    assert Validator(held_out, model).evaluate(0, 0, True) == pytest.approx(
        validation["best"]["MRR@10"])


def test_cbow_training_ends_with_word_benchmarks(tmp_path, rows_file, capsys):
    from conftest import CBOW_SCRIPT

    args = ["--dataset-path", rows_file, "--min-count", "1", "--vector-size", "8", "--epochs", "1", "-c", tmp_path]
    result = run_main(capsys, CBOW_SCRIPT, *args, cwd=tmp_path)
    assert "=== Word-embedding quality ===" in result.stdout
    assert "Analogies (questions-words.txt): accuracy n/a on 0 of 19,544 questions" in result.stdout
    assert "wordsim353: Spearman n/a (0.0% of pairs in vocabulary)" in result.stdout
    skipped = run_main(capsys, CBOW_SCRIPT, *args, "--no-word-benchmarks", cwd=tmp_path)
    assert "Word-embedding quality" not in skipped.stdout


def test_idf_counts_each_word_once_per_text():
    """BM25's IDF over texts, against a count by hand: a word repeated in a text counts once; empty texts
    count in N; words never seen get the highest IDF."""
    from msmarco_search.core.text import tokenize
    from msmarco_search.data.vocab import inverse_document_frequency

    vocab = Vocabulary.from_words(["apple", "pear", "plum", "fig"])
    texts = ["apple apple pear", "", "pear plum pear", "apple", "!!!"]
    idf = inverse_document_frequency(vocab, texts)
    for word in ["apple", "pear", "plum", "fig"]:
        df = sum(word in tokenize(text) for text in texts)
        assert idf[vocab.word_to_index[word]] == pytest.approx(math.log1p((len(texts) - df + 0.5) / (df + 0.5)))
    assert inverse_document_frequency(vocab, []).shape == (len(vocab),)


def test_token_weights_can_start_at_the_idf(trained_pipeline, tmp_path, capsys):
    from msmarco_search.data.vocab import inverse_document_frequency
    from msmarco_search.training.model_file import load_model

    run_main(capsys, TRAIN_SCRIPT, trained_pipeline["triplets"], "--embeddings", trained_pipeline["embeddings"],
             "--init-token-weights", "idf", "--embedding-learning-rate", "1e-12", "--learning-rate", "1e-12",
             "--validation-fraction", "0", "--output-dir", tmp_path, cwd=tmp_path)
    model = load_model(next(tmp_path.glob("two_tower_model_*.pt")))
    vocab = model.vocab
    triplets = load_triplets(trained_pipeline["triplets"])
    idf = inverse_document_frequency(vocab, list(dict.fromkeys(triplets.positives + triplets.negatives)))
    for tower in (model.query_tower, model.passage_tower):
        weights = tower.token_weight.weight.detach()[:, 0]
        assert torch.allclose(weights, torch.from_numpy(idf).clamp_min(1e-4).log(), atol=1e-4)
        assert weights[vocab.word_to_index["the"]] < weights[vocab.word_to_index["doc0y1"]]


def test_mean_over_seeds_groups_models_by_setting(trained_pipeline, tmp_path, corpus, capsys):
    folder = write_tsv_folder(corpus, tmp_path / "tsv", split="dev")
    model = trained_pipeline["model"]
    evaluated = run_main(capsys, EVALUATE_SCRIPT, "--model", f"recipe-s1={model}", "--model", f"recipe-s2={model}",
                         "--model", f"recipe-soup={model}", "--embeddings", trained_pipeline["embeddings"],
                         "--collection", folder / "collection.tsv", "--queries", folder / "queries.dev.tsv", "--qrels",
                         folder / "qrels.dev.tsv", "--systems", "two-tower,bm25,hybrid", "--fusion", "rrf",
                         "--output-dir", tmp_path / "eval", cwd=tmp_path)
    metrics = _report(tmp_path / "eval")["tasks"]["full"]["metrics"]
    # the evaluation table itself gives the mean (min-max) over the seeds of a setting
    assert "mean over seeds (min-max), for models named NAME-s<SEED>:" in evaluated.stdout
    seeds = _report(tmp_path / "eval")["tasks"]["full"]["seeds"]
    assert set(seeds) == {"two-tower[recipe]", "hybrid-rrf[recipe]"} and seeds["two-tower[recipe]"]["seeds"] == 2
    assert seeds["two-tower[recipe]"]["nDCG@10"]["mean"] == pytest.approx(metrics["two-tower[recipe-s1]"]["nDCG@10"])
    printed = run_main(capsys, "benchmarks/mean_over_seeds.py", tmp_path / "eval" / "evaluation.json", "--metrics",
                       "nDCG@10", cwd=tmp_path).stdout.splitlines()
    assert printed[-1] == "bm25: k1 0.9, b 0.4, stemmer english"
    rows = {tuple(line.split()[:3]): line.split()[3] for line in printed[2:-1]}
    assert rows == {("recipe", "two-tower", "2"): f"{metrics['two-tower[recipe-s1]']['nDCG@10']:.4f}",
                    ("recipe", "hybrid-rrf", "2"): f"{metrics['hybrid-rrf[recipe-s1]']['nDCG@10']:.4f}",
                    ("recipe-soup", "two-tower", "1"): f"{metrics['two-tower[recipe-soup]']['nDCG@10']:.4f}",
                    ("recipe-soup", "hybrid-rrf", "1"): f"{metrics['hybrid-rrf[recipe-soup]']['nDCG@10']:.4f}",
                    ("-", "bm25", "1"): f"{metrics['bm25']['nDCG@10']:.4f}"}
    broken = run_script("benchmarks/mean_over_seeds.py", folder / "queries.dev.tsv", cwd=tmp_path, check=False)
    assert broken.returncode == 2 and "queries.dev.tsv" in broken.stderr and "Traceback" not in broken.stderr


def test_mean_over_seeds_compares_settings_on_their_seed_means_with_p_values(tmp_path, capsys):
    """--baseline: the difference of each setting to the baseline setting, query by query on the mean of its
    seeds, with scipy's paired t-test and Wilcoxon p-values."""
    from conftest import cli
    from scipy.stats import ttest_rel, wilcoxon

    queries = [f"q{i}" for i in range(8)]
    a1, a2 = [0.1 * i for i in range(8)], [0.1 * i + 0.02 for i in range(8)]
    b1, b2 = [0.1 * i + 0.05 * (i % 3) for i in range(8)], [0.1 * i + 0.03 * (i % 2) + 0.01 for i in range(8)]
    runs = {"two-tower[a-s1]": a1, "two-tower[a-s2]": a2, "two-tower[b-s1]": b1, "two-tower[b-s2]": b2}
    report = {"tasks": {"full": {
        "metrics": {name: {"nDCG@10": sum(v) / 8} for name, v in runs.items()},
        "per_query": {name: {"nDCG@10": dict(zip(queries, v, strict=True))} for name, v in runs.items()}}}}
    (tmp_path / "evaluation.json").write_text(json.dumps(report))
    status, out, err = cli(capsys, "benchmarks/mean_over_seeds.py", tmp_path / "evaluation.json", "--metrics",
                           "nDCG@10", "--baseline", "a")
    assert status == 0, err
    row = next(line for line in out.splitlines() if line.startswith("b "))
    a = [(x + y) / 2 for x, y in zip(a1, a2, strict=True)]
    b = [(x + y) / 2 for x, y in zip(b1, b2, strict=True)]
    expected = f"{(sum(b) - sum(a)) / 8:+.4f} ({ttest_rel(b, a).pvalue:.3f} / {wilcoxon(b, a).pvalue:.3f})"
    assert row.endswith(expected), (row, expected)
    assert "(baseline)" in next(line for line in out.splitlines() if line.startswith("a "))
    status, _, err = cli(capsys, "benchmarks/mean_over_seeds.py", tmp_path / "evaluation.json", "--metrics",
                         "nDCG@10", "--baseline", "c")
    assert status == 2 and "no setting 'c' (settings: a, b)" in err
    status, _, err = cli(capsys, "benchmarks/mean_over_seeds.py", tmp_path / "evaluation.json", "--metrics", "ndcg@10")
    assert status == 2 and "no metric 'ndcg@10' in it (it has nDCG@10)" in err
    status, _, err = cli(capsys, "benchmarks/mean_over_seeds.py", tmp_path / "missing.json")
    assert status == 2 and err.strip() == f"error: {tmp_path / 'missing.json'}: file not found"


def test_averaging_models_of_two_seeds_gives_the_mean_weights(trained_pipeline, tmp_path, corpus, capsys,
                                                              monkeypatch):
    from msmarco_search.training.model_file import load_model

    work = trained_pipeline["work"]
    other = tmp_path / "seed7"
    run_main(capsys, TRAIN_SCRIPT, trained_pipeline["triplets"], "--epochs", "2", "--batch-size", "32",
             "--learning-rate", "3e-3", "--seed", "7", "--output-dir", other, cwd=work)
    second = next(other.glob("two_tower_model_*.pt"))
    done = run_main(capsys, AVERAGE_SCRIPT, trained_pipeline["model"], second, "--output-dir", tmp_path / "soup",
                    cwd=work)
    soup_path = next((tmp_path / "soup").glob("two_tower_model_*.pt"))
    assert str(soup_path) in done.stderr + done.stdout
    soup, first, seven = load_model(soup_path), load_model(trained_pipeline["model"]), load_model(second)
    meta, first_meta, seven_meta = soup.metadata, first.metadata, seven.metadata
    for name, weights in soup.state_dict().items():
        torch.testing.assert_close(weights, (first.state_dict()[name] + seven.state_dict()[name]) / 2)
    assert meta["averaged_from"] == [str(trained_pipeline["model"]), str(second)]
    assert meta["model_id"] not in {first_meta["model_id"], seven_meta["model_id"]}

    # the soup is a model like any other: evaluation loads it
    folder = write_tsv_folder(corpus, tmp_path / "tsv", split="dev")
    run_main(capsys, EVALUATE_SCRIPT, "--model", soup_path, "--embeddings", trained_pipeline["embeddings"],
             "--collection", folder / "collection.tsv", "--queries", folder / "queries.dev.tsv", "--qrels",
             folder / "qrels.dev.tsv", "--systems", "two-tower", "--output-dir", tmp_path / "eval", cwd=work)
    assert _report(tmp_path / "eval")["tasks"]["full"]["metrics"]["two-tower"]["nDCG@10"] > 0.5

    # models of other settings are refused in one line, naming the file
    # (through the scripts' main in this process: a fresh interpreter costs seconds of imports)
    from conftest import cli

    monkeypatch.chdir(work)  # where the scripts ran: its checkpoints/ and data/ are the defaults
    wide = tmp_path / "wide"  # a model whose weights do not matter, only its shape
    assert cli(capsys, TRAIN_SCRIPT, trained_pipeline["triplets"], "--max-steps", "1", "--validation-fraction", "0",
               "--output-dim", "16", "--output-dir", wide)[0] == 0
    status, _, err = cli(capsys, AVERAGE_SCRIPT, trained_pipeline["model"], next(wide.glob("two_tower_model_*.pt")),
                         "--output-dir", tmp_path / "soup2")
    assert status == 2 and "settings differ" in err and "wide" in err
    assert "Traceback" not in err and not list((tmp_path / "soup2").glob("*.pt"))


def test_evaluation_flags_have_one_name_per_meaning(capsys, monkeypatch):
    from msmarco_search.cli.evaluate import main

    monkeypatch.setenv("COLUMNS", "300")  # no line wrapping inside flag names
    with pytest.raises(SystemExit) as exit_status:
        main(["--help"])
    assert exit_status.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default validation)" in out and "(default train)" not in out
    for flag in ("--run-depth", "--fusion", "--fusion-weight", "--rrf-k", "--fusion-depth", "--device"):
        assert f"{flag} " in out, flag
    assert "--hybrid-methods" not in out and "--hybrid-weight" not in out and "--depth " not in out
    assert "Not --min-relevance" in out and "uses --relevance-threshold instead" in out
    with pytest.raises(SystemExit):
        main(["--hybrid-weight", "0.3"])  # the old names are gone, not aliases
    assert "unrecognized arguments: --hybrid-weight" in capsys.readouterr().err


def test_cbow_rows_use_the_models_own_embeddings_and_refuse_others(trained_pipeline, tmp_path, corpus, capsys):
    from msmarco_search.data.vocab import Vocabulary
    from msmarco_search.embeddings.cbow import load_embeddings, save_embeddings

    folder = write_tsv_folder(corpus, tmp_path / "tsv", split="dev")
    files = ["--collection", folder / "collection.tsv", "--queries", folder / "queries.dev.tsv", "--qrels",
             folder / "qrels.dev.tsv", "--systems", "two-tower,cbow", "--max-queries", "20"]
    # no --embeddings, from another folder: the CBOW rows use the vectors the model was trained from
    run_main(capsys, EVALUATE_SCRIPT, "--model", trained_pipeline["model"], *files, "--output-dir", tmp_path / "own",
             cwd=tmp_path)
    systems = _report(tmp_path / "own")["systems"]
    assert systems["cbow-mean"]["embeddings"] == str(trained_pipeline["embeddings"].resolve())

    matrix, vocab, _ = load_embeddings(trained_pipeline["embeddings"])
    other = save_embeddings(tmp_path / "other.pt", matrix[:-1], Vocabulary(vocab.index_to_word[:-1]), {})
    refused = run_main(capsys, EVALUATE_SCRIPT, "--model", trained_pipeline["model"], *files, "--embeddings", other,
                       "--output-dir", tmp_path / "other", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "other.pt: these CBOW embeddings are not the ones" in refused.stderr


def test_seed_summary_is_the_mean_min_and_max_over_a_settings_seeds():
    from msmarco_search.evaluation.metrics import seed_summary

    metrics = {"two-tower[a-s1]": {"nDCG@10": 0.4, "R@100": 0.5}, "two-tower[a-s2]": {"nDCG@10": 0.6, "R@100": 0.7},
               "hybrid-rrf[a-s1]": {"nDCG@10": 0.5, "R@100": 0.6}, "two-tower[b]": {"nDCG@10": 0.9, "R@100": 0.9},
               "bm25": {"nDCG@10": 0.45, "R@100": 0.55}}
    summary = seed_summary(metrics, ["nDCG@10", "R@100"])
    assert set(summary) == {"two-tower[a]"}  # one seed, or no seed at all, is not averaged
    assert summary["two-tower[a]"]["seeds"] == 2
    assert summary["two-tower[a]"]["nDCG@10"] == pytest.approx({"mean": 0.5, "min": 0.4, "max": 0.6})


def test_a_failed_evaluation_leaves_no_empty_output_folder(tmp_path, monkeypatch, capsys):
    """Bad judgments found once the work has begun: one line, and the run's own timestamped folder is gone."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "collection.tsv").write_text("p1\thello world\np2\tgoodbye moon\n")
    (tmp_path / "queries.tsv").write_text("q1\thello\n")
    (tmp_path / "qrels.txt").write_text("q1 0 p1 x\n")
    result = cli(capsys, "evaluation/evaluate.py", "--systems", "bm25", "--collection", "collection.tsv",
                 "--queries", "queries.tsv", "--qrels", "qrels.txt")
    assert_one_line_error(result, "qrels.txt", "not an integer")
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())
