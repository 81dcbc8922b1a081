"""Speed benchmarks of every stage, each in its own process (wall time, rate, peak memory), as a table.

    uv run benchmarks/run_all.py                 # 50k queries (MS MARCO v1.1 scale), ~25 min on 2 cores
    uv run benchmarks/run_all.py --size 2000 --repeats 1 --no-write    # a quick run

Stages (scripts run as a user runs them, ``MSMARCO_SEARCH_NO_PROGRESS=1``): the data set
(``benchmarks/make_dataset.py``, speed only); CBOW (the project's gensim ``corpus_file`` path, 5 epochs)
against gensim fed an iterator of token lists; triplet generation; two-tower training (batch 256, passages
cut at 128 tokens: mean tower with trainable and frozen embeddings, on 1 and on all threads, and the GRU
tower for a few steps); indexing 100k passages and query latency (query encoding + exact top-10 by one
matrix product, one query at a time); the triples TSV streamed into token arrays at two sizes (peak memory
should not grow with the input). Peak memory is the stage process's maximum resident set
(``os.wait4``), and the load average is recorded next to each figure: the machine is shared.
Timed figures are medians over ``--repeats`` runs. With ``--profile``, a torch.profiler table of the
training step is added. The table replaces the block between the ``speed:begin`` and ``speed:end`` markers of
docs/results.md ("Stages at 50K queries"); ``--no-write`` only prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "results.md"
BEGIN, END = "<!-- speed:begin (written by benchmarks/run_all.py) -->", "<!-- speed:end -->"
CBOW = "text_embeddings/train_text_embeddings_cbow_msmarco.py"
TRIPLETS = "preprocessing/generate_triplets.py"
TRAIN = "training/train_two_tower_from_triplets.py"


def run_stage(args: list[str], cwd: Path) -> dict:
    """Run one stage process; its wall time, peak RSS (MiB), output, and the load average around it."""
    env = {**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with open(cwd / "stage.out", "w") as out:
        process = subprocess.Popen([sys.executable, *map(str, args)], cwd=cwd, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    output = (cwd / "stage.out").read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage failed: {shlex.join(map(str, args))}\n{output[-3000:]}")
    return {"wall": wall, "rss_mib": usage.ru_maxrss / 1024, "output": output,
            "load": (load_before + os.getloadavg()[0]) / 2}


def median_runs(args: list[str], cwd: Path, repeats: int, parse=None) -> dict:
    runs = []
    for _ in range(repeats):
        run = run_stage(args, cwd)
        if parse:
            run.update(parse(run["output"]))
        runs.append(run)
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    result = {k: statistics.median(r[k] for r in runs) for k in keys}
    result["rss_mib"] = max(r["rss_mib"] for r in runs)
    result["runs"] = len(runs)
    result["command"] = shlex.join(["uv", "run", *map(str, args)])
    return result


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    if not match:
        raise SystemExit(f"cannot find {pattern!r} in:\n{text[-2000:]}")
    return float(match.group(1).replace(",", ""))


def parse_training(output: str) -> dict:
    return {"seconds": _number(r"Training completed in ([\d.]+) seconds", output),
            "rate": _number(r"\(([\d,]+) triplets/s\)", output)}


# ------------------------------------------------------------------------------ stages run in child processes


def stage_cbow_iterator(corpus: Path, epochs: int) -> None:
    """gensim fed by a Python iterator of token lists (what most pipelines do), same settings as the project."""
    from gensim.models import Word2Vec

    from msmarco_search.embeddings.cbow import CbowSettings

    class Sentences:
        def __iter__(self):
            with open(corpus, encoding="utf-8") as handle:
                for line in handle:
                    yield line.split()

    settings = CbowSettings(epochs=epochs)
    started = time.perf_counter()
    model = Word2Vec(sentences=Sentences(), sg=0, vector_size=settings.vector_size, window=settings.window,
                     min_count=settings.min_count, workers=settings.resolved_workers(), epochs=settings.epochs,
                     negative=settings.negative, sample=settings.sample, seed=settings.seed)
    seconds = time.perf_counter() - started
    print(f"words {model.corpus_total_words} epochs {epochs} seconds {seconds:.3f}")


def stage_index(model_path: Path, rows: Path, passages: int, queries: int) -> None:
    """Index ``passages`` passages with the passage tower, then time single queries (encode + exact top-10)."""
    import numpy as np
    import torch

    from msmarco_search.data.tokens import TokenBatch
    from msmarco_search.training.model_file import load_model

    torch.set_num_threads(1)
    model = load_model(model_path)
    vocab = model.vocab
    texts, seen, query_texts = [], set(), []
    with open(rows, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if len(query_texts) < queries:
                query_texts.append(row["query"])
            for text in row["passages"]["passage_text"]:
                if text not in seen:
                    seen.add(text)
                    texts.append(text)
            if len(texts) >= passages:
                break
    texts = texts[:passages]
    seen.clear()
    started = time.perf_counter()
    arrays = vocab.encode_many(texts, model.config.max_passage_length)
    tokenised = time.perf_counter()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(arrays), 4096):
            batch = TokenBatch.from_arrays(arrays, np.arange(start, min(start + 4096, len(arrays))))
            parts.append(model.passage_vectors(batch))
    matrix = torch.cat(parts)
    indexed = time.perf_counter()
    latencies = []
    with torch.inference_mode():
        for query in query_texts:
            begin = time.perf_counter()
            vector = model.query_vectors(TokenBatch.from_lists([vocab.encode(query,
                                                                              model.config.max_query_length)]))
            torch.topk(matrix @ vector.squeeze(0), 10)
            latencies.append(time.perf_counter() - begin)
    latencies_ms = np.array(latencies) * 1000
    print(f"passages {len(texts)} tokenise {tokenised - started:.3f} encode {indexed - tokenised:.3f} "
          f"p50 {np.percentile(latencies_ms, 50):.3f} p99 {np.percentile(latencies_ms, 99):.3f} "
          f"queries {len(latencies)}")


def stage_stream(arguments: list[str]) -> None:
    """The training script in this process, then its memory split: anonymous (heap) against file-backed.

    Pages of the memory-mapped token files that training touches (and their neighbours, which the kernel
    maps in on each fault) count in the resident set, but they are page cache, shared and dropped under
    memory pressure; the heap (``RssAnon``) is what grows if data were held in memory.
    """
    import runpy

    sys.argv = [str(ROOT / TRAIN), *arguments]
    try:
        runpy.run_path(str(ROOT / TRAIN), run_name="__main__")
    except SystemExit as done:
        if done.code:
            raise
    status = {line.split(":")[0]: int(line.split()[1]) for line in open("/proc/self/status")
              if line.startswith(("RssAnon", "RssFile", "VmHWM"))}
    print(f"anon_mib {status['RssAnon'] / 1024:.1f} file_mib {status['RssFile'] / 1024:.1f} "
          f"hwm_mib {status['VmHWM'] / 1024:.1f}")


def stage_profile(work: Path, steps: int) -> None:
    """torch.profiler over ``steps`` training steps of the mean tower (batch 256), the 15 costliest ops."""
    import numpy as np
    import torch
    from torch.profiler import profile

    from msmarco_search.data.tokens import tokenise_triplets
    from msmarco_search.data.triplets import load_triplets
    from msmarco_search.embeddings.cbow import load_embeddings
    from msmarco_search.training.config import TwoTowerConfig
    from msmarco_search.training.losses import InBatchSoftmaxLoss
    from msmarco_search.training.model import TwoTowerModel
    from msmarco_search.training.trainer import epoch_order

    torch.set_num_threads(1)
    triplets_file = next((work / "data").glob("msmarco_triplets_*.pkl"))
    matrix, vocab, _ = load_embeddings(work / "checkpoints" / "msmarco_word2vec.pt")
    data = tokenise_triplets(load_triplets(triplets_file), vocab, 32, 128)
    model = TwoTowerModel(TwoTowerConfig(vocab_size=len(vocab), embedding_dim=matrix.shape[1]), vocab,
                          matrix).train()
    optimizers, loss_fn = model.configure_optimizers(1e-4, 1e-2), InBatchSoftmaxLoss()
    order = epoch_order(len(data), 0, 1)
    phases = {"batch": 0.0, "forward": 0.0, "backward": 0.0, "optimiser": 0.0}

    def step(i: int) -> None:
        t0 = time.perf_counter()
        q, p, n = data.batch(order[(i * 256) % (len(data) - 256):][:256])
        t1 = time.perf_counter()
        loss = loss_fn(*model(q, p, n))
        t2 = time.perf_counter()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        for optimizer in optimizers:
            optimizer.step()
        t4 = time.perf_counter()
        for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            phases[key] += value

    for i in range(5):
        step(i)
    phases = dict.fromkeys(phases, 0.0)
    for i in range(steps):
        step(i)
    print("phases (ms per step): " + ", ".join(f"{k} {v / steps * 1000:.1f}" for k, v in phases.items()))
    with profile() as prof:
        for i in range(steps):
            step(i)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=48))
    del np


# ------------------------------------------------------------------------------------------------ the driver


def run_all(args: argparse.Namespace) -> dict:
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    py = [str(ROOT / "benchmarks" / "run_all.py")]
    rows = work / f"rows_{args.size}.jsonl"
    results: dict = {}
    if not rows.is_file():
        run_stage([ROOT / "benchmarks" / "make_dataset.py", "--size", args.size, "--output", rows], work)
    source = ["--dataset-path", rows, "--data-dir", work / "data"]

    print("CBOW (corpus file) ...", flush=True)
    # without the word benchmarks that close stage 1 (evaluation, ~25 s): this times building the vectors
    results["cbow_file"] = median_runs([ROOT / CBOW, *source, "-c", work / "checkpoints", "--epochs", args.cbow_epochs,
                                        "--no-word-benchmarks"],
                                       work, args.cbow_repeats, lambda o: {
                                           "seconds": _number(r"Training completed in ([\d.]+) seconds", o)})
    corpus = next((work / "data").glob("cbow_corpus_*.txt"))
    words = json.loads(json.dumps(__import__("torch").load(work / "checkpoints" / "msmarco_word2vec.pt",
                                                          weights_only=True)["metadata"]["words_in_corpus"]))
    results["cbow_file"]["words_per_second"] = words * args.cbow_epochs / results["cbow_file"]["seconds"]
    results["corpus_words"] = words
    if not args.skip_iterator:
        print("CBOW (iterator of token lists) ...", flush=True)
        results["cbow_iterator"] = median_runs([*py, "--stage", "cbow-iterator", "--corpus", corpus, "--cbow-epochs",
                                                args.cbow_epochs], work, args.cbow_repeats,
                                               lambda o: {"seconds": _number(r"seconds ([\d.]+)", o)})
        results["cbow_iterator"]["words_per_second"] = (words * args.cbow_epochs
                                                        / results["cbow_iterator"]["seconds"])

    print("triplets ...", flush=True)
    results["triplets"] = median_runs([ROOT / TRIPLETS, *source, "--max-samples", args.size, "--seed", 1], work,
                                      args.repeats)
    triplets = sorted((work / "data").glob("msmarco_triplets_*.pkl"))[-1]
    metadata = json.loads(triplets.with_name(triplets.stem + "_metadata.json").read_text())
    # in-process time of the stage (reading the rows and building the triplets), without interpreter start-up
    results["triplets"]["rows_per_second"] = metadata["queries_read"] / metadata["seconds"]
    results["num_triplets"] = metadata["num_triplets"]

    train = [ROOT / TRAIN, triplets, "--embeddings", work / "checkpoints" / "msmarco_word2vec.pt", "--data-dir",
             work / "data", "--batch-size", 256, "--max-passage-length", 128, "--epochs", 1, "--checkpoint-every", 0,
             # no held-out validation: the labels are random here, and it would time evaluation, not training
             "--validation-fraction", 0]
    variants = {"train_mean": ["--no-save"], "train_mean_frozen": ["--no-save", "--freeze-embeddings"],
                # on a shared machine this one can be 30x slower: a fixed number of steps bounds its cost
                "train_mean_all_threads": ["--no-save", "--threads", 0, "--max-steps", args.gru_steps * 5],
                "train_gru": ["--no-save", "--tower", "gru", "--max-steps", args.gru_steps]}
    run_stage([*train, "--output-dir", work / "checkpoints", "--max-steps", 1], work)  # warm the token cache
    for name, extra in variants.items():
        print(f"{name} ...", flush=True)
        results[name] = median_runs([*train, *extra], work, args.repeats, parse_training)
    run_stage([*train, "--output-dir", work / "model"], work)
    model = sorted((work / "model").glob("two_tower_model_*[0-9].pt"))[-1]

    print("index + queries ...", flush=True)
    results["index"] = median_runs([*py, "--stage", "index", "--model", model, "--rows", rows, "--passages",
                                    args.index_passages, "--queries", 1000], work, args.repeats, lambda o: {
        k: _number(rf"{k} ([\d.]+)", o) for k in ("passages", "tokenise", "encode", "p50", "p99")})
    results["index"]["passages_per_second"] = results["index"]["passages"] / (
        results["index"]["tokenise"] + results["index"]["encode"])

    print("streaming triples TSV at two sizes ...", flush=True)
    results["streaming"] = {}
    for lines in (args.stream_lines, 4 * args.stream_lines):
        tsv = work / f"triples_{lines}.tsv"
        if not tsv.is_file():
            run_stage([ROOT / "benchmarks" / "make_dataset.py", "--format", "triples", "--size", lines, "--output",
                       tsv], work)
        for cached in (work / "data").glob("triples_tokens_*"):
            for file in cached.iterdir():
                file.unlink()
            cached.rmdir()
        stream_args = [tsv, "--embeddings", work / "checkpoints" / "msmarco_word2vec.pt", "--data-dir",
                       work / "data", "--batch-size", 256, "--max-steps", 20, "--no-save"]
        run = run_stage([*py, "--stage", "stream", "--", *stream_args], work)
        results["streaming"][lines] = {"wall": run["wall"], "rss_mib": run["rss_mib"], "load": run["load"],
                                       "tsv_mib": tsv.stat().st_size / 2**20,
                                       "anon_mib": _number(r"anon_mib ([\d.]+)", run["output"]),
                                       "file_mib": _number(r"file_mib ([\d.]+)", run["output"])}
    results["stream_command"] = shlex.join(["uv", "run", "benchmarks/run_all.py", "--stage", "stream", "--",
                                            "triples_N.tsv", "--batch-size", "256", "--max-steps", "20", "--no-save"])
    if args.profile:
        output = run_stage([*py, "--stage", "profile", "--work", work, "--steps", 20], work)["output"]
        # drop the profiler's own start/stop and no-GPU log lines
        results["profile"] = "\n".join(line for line in output.splitlines()
                                       if not line.startswith(("USDT:", "ERROR:", "WARNING:")))
    return results


def table(results: dict, args: argparse.Namespace, command: str) -> str:
    r = results
    size = args.size
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {platform.node() and 'development machine'}, {os.cpu_count()} CPU cores, {platform.machine()}, "
        f"Python {platform.python_version()}, no GPU; {datetime.now():%Y-%m-%d %H:%M}. "
        "Shared with other jobs: the load average (1 min) during each stage is in the table; on a quiet "
        "machine the figures are better.  ",
        f"Data: `benchmarks/make_dataset.py --size {size}` ({size:,} queries x 10 passages, "
        f"{r['corpus_words']:,} words in the CBOW corpus, {r['num_triplets']:,} triplets). Medians of "
        f"{args.repeats} runs ({args.cbow_repeats} for CBOW); peak RSS is the maximum.",
        "",
        "| stage | rate | wall (s) | peak RSS (MiB) | load |",
        "|---|---|---:|---:|---:|",
        f"| CBOW, gensim from the corpus file (project), {args.cbow_epochs} epochs | "
        f"{r['cbow_file']['words_per_second']:,.0f} words/s | {r['cbow_file']['wall']:.1f} | "
        f"{r['cbow_file']['rss_mib']:.0f} | {r['cbow_file']['load']:.1f} |",
    ]
    if "cbow_iterator" in r:
        lines.append(f"| CBOW, gensim from an iterator of token lists, {args.cbow_epochs} epochs | "
                     f"{r['cbow_iterator']['words_per_second']:,.0f} words/s | {r['cbow_iterator']['wall']:.1f} | "
                     f"{r['cbow_iterator']['rss_mib']:.0f} | {r['cbow_iterator']['load']:.1f} |")
    lines.append(f"| triplet generation | {r['triplets']['rows_per_second']:,.0f} rows/s | "
                 f"{r['triplets']['wall']:.1f} | {r['triplets']['rss_mib']:.0f} | {r['triplets']['load']:.1f} |")
    names = {"train_mean": "two-tower, mean tower, trainable embeddings, 1 thread (default)",
             "train_mean_frozen": "two-tower, mean tower, frozen embeddings, 1 thread",
             "train_mean_all_threads": f"two-tower, mean tower, trainable, {os.cpu_count()} threads (`--threads 0`, "
                                       f"{args.gru_steps * 5} steps)",
             "train_gru": f"two-tower, GRU tower ({args.gru_steps} steps)"}
    for key, name in names.items():
        lines.append(f"| {name} | {r[key]['rate']:,.0f} triplets/s | {r[key]['wall']:.1f} | "
                     f"{r[key]['rss_mib']:.0f} | {r[key]['load']:.1f} |")
    index = r["index"]
    lines.append(f"| indexing {index['passages']:,.0f} passages (tokenise + passage tower) | "
                 f"{index['passages_per_second']:,.0f} passages/s | {index['tokenise'] + index['encode']:.1f} | "
                 f"{index['rss_mib']:.0f} | {index['load']:.1f} |")
    lines.append(f"| query latency over {index['passages']:,.0f} passages (encode + exact top-10) | "
                 f"p50 {index['p50']:.2f} ms, p99 {index['p99']:.2f} ms | | | {index['load']:.1f} |")
    for lines_count, run in r["streaming"].items():
        lines.append(f"| triples TSV streamed into token arrays ({int(lines_count):,} lines, "
                     f"{run['tsv_mib']:.0f} MiB), then 20 steps | {int(lines_count) / run['wall']:,.0f} lines/s "
                     f"(whole process) | {run['wall']:.1f} | {run['rss_mib']:.0f} (at the end: heap "
                     f"{run['anon_mib']:.0f}, mapped token files {run['file_mib']:.0f}) | {run['load']:.1f} |")
    lines += ["", "Stage commands (each run as its own process):", ""]
    for key in ("cbow_file", "cbow_iterator", "triplets", "train_mean", "train_mean_frozen", "train_mean_all_threads",
                "train_gru", "index"):
        if key in r:
            lines.append(f"- {key}: `{r[key]['command'].replace(str(args.work_dir.resolve()), 'WORK')}`")
    lines.append(f"- streaming: `{r['stream_command']}`")
    if "profile" in r:
        lines += ["", "Training-step profile (`benchmarks/run_all.py --stage profile`, mean tower, batch 256, "
                      "1 thread):", "", "```", r["profile"].strip(), "```"]
    return "\n".join(lines)


def write_doc(text: str) -> None:
    """Replace the block between the markers of docs/results.md ("Stages at 50K queries") with ``text``."""
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC}: the markers {BEGIN} and {END} are missing; the table was not written")
    DOC.write_text(doc[:doc.index(BEGIN)] + f"{BEGIN}\n{text}\n{END}" + doc[doc.index(END) + len(END):])


def main(argv: list[str] | None = None) -> int:
    from msmarco_search.cli.arguments import epoch_count, non_negative_int, positive_int

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=positive_int, default=50_000, help="queries in the data set (50000)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs per stage; medians are reported (3)")
    parser.add_argument("--cbow-repeats", type=positive_int, default=1, help="runs of the CBOW stages (1: ~5 min each)")
    parser.add_argument("--cbow-epochs", type=epoch_count, default=5)
    parser.add_argument("--gru-steps", type=positive_int, default=10, help="GRU tower steps measured (10)")
    parser.add_argument("--index-passages", type=positive_int, default=100_000)
    parser.add_argument("--stream-lines", type=non_negative_int, default=0,
                        help="triples TSV lines at the smaller streaming size (default 4 x --size); also 4x that")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/msmarco_speed_bench"))
    parser.add_argument("--skip-iterator", action="store_true", help="skip the gensim iterator comparison")
    parser.add_argument("--profile", action="store_true", help="add a torch.profiler table of the training step")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--passages", type=positive_int, help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=positive_int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=positive_int, help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage == "cbow-iterator":
        stage_cbow_iterator(args.corpus, args.cbow_epochs)
        return 0
    if args.stage == "index":
        stage_index(args.model, args.rows, args.passages, args.queries)
        return 0
    if args.stage == "stream":
        stage_stream(args.rest)
        return 0
    if args.stage == "profile":
        stage_profile(args.work, args.steps)
        return 0
    args.stream_lines = args.stream_lines or 4 * args.size
    command = shlex.join(["uv", "run", "benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])])
    results = run_all(args)
    (args.work_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    text = table(results, args, command)
    print(text)
    if not args.no_write:
        write_doc(text)
        print(f"\nwrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
