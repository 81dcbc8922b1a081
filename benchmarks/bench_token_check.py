"""Peak memory of loading (and checking) big token arrays: the chunked check against reading the memory map.

    uv run benchmarks/bench_token_check.py [--tokens 500000000] [--dir /tmp/token_check]

Writes ``--tokens`` random int32 ids (4 bytes each) as ``side.ids.npy`` plus offsets, then loads them in two
fresh processes: ``TokenArrays.load(..., vocab_size=...)`` (the project's check, a chunk at a time through a
file handle) and the same checks done on the memory map (``ids.min()``, ``ids.max()``, ``np.diff(offsets)``:
how the check was written before). Prints each one's peak resident set (``VmHWM``) and time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VOCAB = 100_000


def positive_int(text: str) -> int:
    value = int(text) if text.strip().lstrip("+").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return value


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load(directory: str, method: str) -> None:
    from msmarco_search.arrays import TokenArrays

    before, start = _peak_mib(), time.perf_counter()
    if method == "chunked":
        TokenArrays.load(directory, "side", vocab_size=VOCAB)
    else:
        ids = np.load(Path(directory) / "side.ids.npy", mmap_mode="r")
        offsets = np.load(Path(directory) / "side.offsets.npy", mmap_mode="r")
        assert not (np.diff(offsets) < 0).any() and int(ids.min()) >= 0 and int(ids.max()) < VOCAB
    print(f"{method:>8}: peak resident set {_peak_mib():,.0f} MiB (start-up {before:,.0f}), "
          f"{time.perf_counter() - start:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=positive_int, default=500_000_000,
                        help="token ids to write (500,000,000: 1.86 GiB; the files stay in --dir afterwards)")
    parser.add_argument("--dir", default="/tmp/token_check", help="where the arrays are written (/tmp/token_check)")
    parser.add_argument("--load", choices=["chunked", "map"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        _load(args.dir, args.load)
        return
    from msmarco_search.arrays import TokenArrays, TokenArrayWriter
    from msmarco_search.errors import PipelineError
    from msmarco_search.resources import check_disk

    try:  # 4 bytes an id and 8 an offset every 60 ids: refused before the first chunk, not at a full disk
        check_disk(args.tokens * (4 + 8 / 60), args.dir, f"{args.tokens:,} token ids", "lower --tokens or pass "
                   "another --dir")
    except PipelineError as error:
        parser.error(str(error))
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    writer, rng, chunk = TokenArrayWriter(directory, "side"), np.random.default_rng(0), 10_000_000
    for start in range(0, args.tokens, chunk):
        ids = rng.integers(0, VOCAB, min(chunk, args.tokens - start), dtype=np.int32)
        offsets = np.arange(0, len(ids) + 1, 60, dtype=np.int64)
        offsets[-1] = len(ids)
        writer.append(TokenArrays(ids, offsets))
    writer.close()
    print(f"{args.tokens:,} token ids ({args.tokens * 4 / 2**30:.2f} GiB) in {directory}")
    for method in ("chunked", "map"):
        subprocess.run([sys.executable, __file__, "--dir", args.dir, "--load", method], check=True)


if __name__ == "__main__":
    main()
