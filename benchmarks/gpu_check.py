"""The GPU check: training, indexing, exact search and torchrun on the machine at hand; one table.

Run through ``benchmarks/gpu_check.sh`` (which installs the project with uv first). Everything it needs it
builds in ``--work``: a triples TSV (``make_dataset.py``: real text where ``../shared/data`` is present,
synthetic otherwise), a vocabulary of its words with random 300-d vectors, an untrained model and a
collection of the TSV's passages. The figures are speed only (the vectors are random).

Rows: training triplets/s (``train_throughput.py``, bf16 autocast on CUDA, batch 1,024 and 8,192); indexing
(``search/search.py index``, end to end, and the passage tower alone on tokenised passages); exact search
(``dense.exact_search`` over the encoded passages, on the device); ``torchrun`` of the training script
on every GPU present (NCCL; gloo with 2 processes on the CPU). ``--cpu-smoke``: the same on the CPU at small
sizes, to prove the script end to end where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU = {"lines": 520_000, "batches": (1024, 8192), "steps": 20, "warmup": 5, "passages": 1_000_000,
       "queries": 1000, "ddp_lines": 100_000, "ddp_batch": 1024, "ddp_steps": 30}
SMOKE = {"lines": 6_000, "batches": (64, 128), "steps": 5, "warmup": 2, "passages": 12_000,
         "queries": 100, "ddp_lines": 2_000, "ddp_batch": 32, "ddp_steps": 5}
os.environ.update(MSMARCO_SEARCH_NO_PROGRESS="1", TOKENIZERS_PARALLELISM="false")
ENV = dict(os.environ)


def _run(command: list, timeout: float, env: dict | None = None) -> tuple[float, str]:
    """Run ``command`` (wall seconds, output); raise with its last output line on failure."""
    start = time.perf_counter()
    done = subprocess.run([str(c) for c in command], cwd=ROOT, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)
    output = done.stdout + done.stderr
    if done.returncode:
        last = [line for line in output.splitlines() if line.strip()][-1:] or [f"exit {done.returncode}"]
        raise RuntimeError(f"{Path(str(command[1])).name} failed: {last[0][:200]}")
    return time.perf_counter() - start, output


def make_inputs(work: Path, sizes: dict) -> dict:
    """The triples TSV, the random vectors over its words, an untrained model, a collection of its passages."""
    import torch

    from msmarco_search.core.text import tokenize
    from msmarco_search.data.tokens import read_tsv_chunks
    from msmarco_search.data.vocab import Vocabulary
    from msmarco_search.embeddings.cbow import save_embeddings
    from msmarco_search.training.config import TwoTowerConfig
    from msmarco_search.training.model import TwoTowerModel
    from msmarco_search.training.model_file import save_two_tower

    triples = work / "triples.tsv"
    if not triples.is_file():
        _run([sys.executable, ROOT / "benchmarks" / "make_dataset.py", "--format", "triples", "--size",
              sizes["lines"], "--output", triples], 600)
    collection, words, count = work / "collection.tsv", set(), 0
    with open(collection, "w", encoding="utf-8") as out:
        for queries, positives, negatives in read_tsv_chunks(triples, 3):
            for text in queries[:2000] + positives[:2000]:  # the vocabulary from a sample of every chunk
                words.update(tokenize(text))
            for text in positives + negatives:
                if count < sizes["passages"]:
                    out.write(f"{count}\t{text}\n")
                    count += 1
    vocab = Vocabulary.from_words(sorted(words))
    matrix = torch.randn(len(vocab), 300, generator=torch.Generator().manual_seed(0)) * 0.1
    embeddings = save_embeddings(work / "embeddings.pt", matrix, vocab, {"note": "random vectors, speed only"})
    model = TwoTowerModel(TwoTowerConfig(vocab_size=len(vocab), embedding_dim=300), vocab, matrix)
    model_path = save_two_tower(work / "model.pt", model, {})
    head = work / "triples_ddp.tsv"
    with open(triples, encoding="utf-8") as source, open(head, "w", encoding="utf-8") as out:
        for index, line in enumerate(source):
            if index >= sizes["ddp_lines"]:
                break
            out.write(line)
    return {"triples": triples, "embeddings": embeddings, "model": model_path, "collection": collection,
            "passages": count, "ddp_triples": head, "vocabulary": len(vocab)}


def check_training(inputs: dict, sizes: dict, device: str, batch: int) -> str:
    out = inputs["triples"].with_name(f"train_{batch}.json")
    _run([sys.executable, ROOT / "benchmarks" / "train_throughput.py", "--triplets", inputs["triples"],
          "--embeddings", inputs["embeddings"], "--systems", "trainable", "--device", device, "--batch-size", batch,
          "--steps", sizes["steps"], "--warmup", sizes["warmup"], "--json", out,
          # on the CPU one thread (docs/experiments.md, "Training speed": more threads on shared cores are
          # slower); on a GPU all
          "--threads", 1 if device == "cpu" else 0], 900)
    rate = json.loads(out.read_text())["median_triplets_per_second"]["trainable"]
    return f"{rate:,.0f} triplets/s"


def check_index_command(inputs: dict, work: Path, device: str) -> str:
    seconds, output = _run([sys.executable, ROOT / "search" / "search.py", "index", inputs["model"], "--dataset-path",
                            inputs["collection"], "--index-dir", work / "index", "--no-bm25", "--device", device,
                            "--batch-size", 8192], 900)
    return f"{inputs['passages'] / seconds:,.0f} passages/s ({seconds:.1f} s wall, start-up and tokenising included)"


def check_encoding(inputs: dict, device: str, queries: int) -> tuple[str, str, str]:
    """Tokenising (CPU), the passage tower alone (device), and exact search over its vectors (device)."""
    import numpy as np
    import torch

    from msmarco_search.data.tokens import TokenBatch, read_tsv_chunks
    from msmarco_search.search.dense import exact_search
    from msmarco_search.training.model_file import load_model

    model = load_model(inputs["model"], device)
    texts = [text for chunk in read_tsv_chunks(inputs["collection"], 2) for text in chunk[1]]
    start = time.perf_counter()
    arrays = model.vocab.encode_many(texts, model.config.max_passage_length)
    tokenise = len(texts) / (time.perf_counter() - start)
    batches = [TokenBatch.from_arrays(arrays, np.arange(s, min(s + 8192, len(texts))))
               for s in range(0, len(texts), 8192)]
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    with torch.no_grad(), autocast:
        model.passage_vectors(batches[0].to(device))  # warm-up
        synchronize()
        start = time.perf_counter()
        vectors = [model.passage_vectors(b.to(device)).float() for b in batches]
        synchronize()
        encode = len(texts) / (time.perf_counter() - start)
    matrix = torch.cat(vectors).cpu().numpy()
    query_vectors = torch.from_numpy(matrix[:queries].copy())
    exact_search(matrix, query_vectors[:8], 10, device=device)  # warm-up
    synchronize()
    start = time.perf_counter()
    exact_search(matrix, query_vectors, 10, device=device)
    synchronize()
    search = queries / (time.perf_counter() - start)
    return (f"{tokenise:,.0f} passages/s (1 CPU thread)", f"{encode:,.0f} passages/s (bf16)" if
            device.startswith("cuda") else f"{encode:,.0f} passages/s",
            f"{search:,.0f} queries/s ({queries:,} queries at once, top-10 of {len(texts):,})")


def check_torchrun(inputs: dict, work: Path, sizes: dict, device: str) -> str:
    import torch

    processes = torch.cuda.device_count() if device.startswith("cuda") else 2
    backend = "NCCL" if device.startswith("cuda") else "gloo"
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    _, output = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", processes,
                      ROOT / "training" / "train_two_tower_from_triplets.py", inputs["ddp_triples"], "--embeddings",
                      inputs["embeddings"], "--batch-size", sizes["ddp_batch"], "--max-steps", sizes["ddp_steps"],
                      "--no-save", "--validation-fraction", 0, "--data-dir", work / "data", "--device", device,
                      "--output-dir", work / "ddp"], 900, env)
    rates = re.findall(r"([\d,]+) triplets/s", output)
    note = "" if processes > 1 else " (one GPU: one process, DDP not exercised)"
    return (f"{processes} process(es), {backend}: {rates[-1] if rates else '?'} triplets/s, batch "
            f"{sizes['ddp_batch']} per process{note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_check"), help="scratch folder (/tmp/gpu_check)")
    parser.add_argument("--cpu-smoke", action="store_true", help="the CPU at small sizes (no GPU needed)")
    args = parser.parse_args(argv)
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch (use --cpu-smoke to check the script on the CPU)")
        return 2
    device, sizes = ("cpu", SMOKE) if args.cpu_smoke else ("cuda", GPU)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    name = "CPU" if args.cpu_smoke else f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    print(f"gpu_check on {name} (torch {torch.__version__}), work in {args.work}", flush=True)
    inputs = make_inputs(args.work, sizes)
    print(f"inputs: {sizes['lines']:,} triplets, {inputs['passages']:,} passages, "
          f"{inputs['vocabulary']:,} words ({time.perf_counter() - started:.0f} s)", flush=True)
    rows: list[tuple[str, str]] = []

    def row(label: str, check) -> None:
        begin = time.perf_counter()
        try:
            result = check()
        except Exception as error:  # one failed check must not hide the others' figures
            result = f"FAILED: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
        rows.append((label, result))
        print(f"{label}: {result} [{time.perf_counter() - begin:.0f} s]", flush=True)

    for batch in sizes["batches"]:
        row(f"training, mean towers, batch {batch:,}", lambda b=batch: check_training(inputs, sizes, device, b))
    row(f"indexing {inputs['passages']:,} passages (search.py index, dense)",
        lambda: check_index_command(inputs, args.work, device))
    try:
        results = check_encoding(inputs, device, sizes["queries"])
    except Exception as error:  # as in row()
        results = (f"FAILED: {str(error).splitlines()[0] if str(error) else type(error).__name__}",) * 3
    for label, result in zip(("tokenising the passages", "passage tower alone", "exact search on the device"),
                             results, strict=True):
        rows.append((label, result))
        print(f"{label}: {result}", flush=True)
    row("torchrun, training script", lambda: check_torchrun(inputs, args.work, sizes, device))
    print(f"\n| check ({name}) | result |\n|---|---|")
    for label, result in rows:
        print(f"| {label} | {result} |")
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    return 1 if any(result.startswith("FAILED") for _, result in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
