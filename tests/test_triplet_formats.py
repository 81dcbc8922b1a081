"""Triplets as parquet (generate_triplets.py --format parquet): the same triplets as the .pkl, read by
`datasets`, sentence-transformers' trainer and the training script; bad parquet files are one line, exit 2."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TRAIN_SCRIPT, TRIPLETS_SCRIPT, run_script

from msmarco_search.cli import run
from msmarco_search.cli.triplets import main as triplets_main
from msmarco_search.data.records import text_id
from msmarco_search.data.triplets import load_triplets, metadata_path

TEXTS = ["anchor", "positive", "negative"]


@pytest.fixture(scope="module")
def parquet_triplets(tmp_path_factory, trained_pipeline):
    """The triplets of the trained pipeline fixture (same source, same seed), written as parquet by the script."""
    folder = tmp_path_factory.mktemp("parquet")
    run_script(TRIPLETS_SCRIPT, "--dataset-path", trained_pipeline["rows"], "--max-samples", "1000",
               "--format", "parquet", "--output-dir", folder, cwd=folder)
    (path,) = folder.glob("msmarco_triplets_*.parquet")
    return path


def test_parquet_holds_the_pkl_triplets_with_the_hugging_face_column_names(parquet_triplets, trained_pipeline):
    assert parquet_triplets.name.startswith("msmarco_triplets_1k_")
    table = pq.read_table(parquet_triplets)
    assert table.column_names == [*TEXTS, "query_id", "positive_id", "negative_id"]
    assert all(pa.types.is_string(table.schema.field(name).type) for name in table.column_names)
    assert load_triplets(parquet_triplets) == load_triplets(trained_pipeline["triplets"])
    metadata = json.loads(metadata_path(parquet_triplets).read_text())
    assert metadata["format"] == "parquet" and metadata["num_triplets"] == table.num_rows
    pkl_metadata = json.loads(metadata_path(trained_pipeline["triplets"]).read_text())
    assert pkl_metadata["format"] == "pkl" and pkl_metadata["num_triplets"] == table.num_rows


def test_datasets_reads_the_parquet_as_it_is(parquet_triplets, trained_pipeline, tmp_path):
    import datasets

    dataset = datasets.load_dataset("parquet", data_files=str(parquet_triplets), split="train",
                                    cache_dir=str(tmp_path / "hf"))
    expected = load_triplets(trained_pipeline["triplets"])
    assert dataset.column_names == [*TEXTS, "query_id", "positive_id", "negative_id"]
    assert dataset["anchor"] == expected.queries and dataset["negative"] == expected.negatives
    assert dataset[0]["positive_id"] == expected.positive_ids[0]


def test_sentence_transformers_trains_on_it(parquet_triplets, tmp_path):
    st = pytest.importorskip("sentence_transformers")  # the `st` extra; in the dev group too
    import datasets
    from tokenizers import Tokenizer, models, pre_tokenizers

    dataset = datasets.load_dataset("parquet", data_files=str(parquet_triplets), split="train",
                                    cache_dir=str(tmp_path / "hf")).select_columns(TEXTS).select(range(64))
    words = sorted({w for column in TEXTS for text in dataset[column] for w in text.lower().split()})
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    model = st.SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=8)], device="cpu")
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    loss = MultipleNegativesRankingLoss(model)
    arguments = st.SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2,
                                                        per_device_train_batch_size=16, report_to=[],
                                                        save_strategy="no", use_cpu=True)
    trainer = st.SentenceTransformerTrainer(model=model, args=arguments, train_dataset=dataset, loss=loss)
    assert trainer.train().global_step == 2


def test_the_training_script_reads_parquet(parquet_triplets, trained_pipeline, tmp_path):
    result = run_script(TRAIN_SCRIPT, parquet_triplets, "--embeddings", trained_pipeline["embeddings"],
                        "--epochs", "1", "--batch-size", "32", "--output-dir", tmp_path / "models",
                        "--data-dir", tmp_path / "data", cwd=tmp_path)
    assert f"triplets from {parquet_triplets}" in result.stdout  # (some queries held out for validation)
    assert list((tmp_path / "models").glob("two_tower_model_*.pt"))


def bad_files(folder):
    good = {"anchor": ["what is x"], "positive": ["x is a letter"], "negative": ["the sky is blue"]}
    pq.write_table(pa.table({"query": ["what is x"], "positive": ["a"], "negative": ["b"]}), folder / "cols.parquet")
    pq.write_table(pa.table({**good, "negative": [3]}), folder / "types.parquet")
    pq.write_table(pa.table({**good, "anchor": pa.array([None], pa.string())}), folder / "nulls.parquet")
    pq.write_table(pa.table(good), folder / "whole.parquet")
    data = (folder / "whole.parquet").read_bytes()
    (folder / "truncated.parquet").write_bytes(data[: len(data) // 2])
    (folder / "text.parquet").write_text("anchor,positive,negative\n")
    pq.write_table(pa.table({name: pa.array([], pa.string()) for name in good}), folder / "empty.parquet")
    return {
        "cols.parquet": "need the columns anchor, positive, negative; missing anchor (it has query, positive, "
                        "negative)",
        "types.parquet": "parquet column 'negative' holds int64, not strings",
        "nulls.parquet": "parquet column 'anchor' has 1 empty (null) values",
        "truncated.parquet": "truncated or corrupt parquet file",
        "text.parquet": "not a parquet file",
        "empty.parquet": "holds no triplets",
    }


def triplets_status(*args: object) -> int:
    """The triplets command run as its script runs it (through ``cli.run``): its exit status."""
    with pytest.raises(SystemExit) as stop:
        run(triplets_main, [str(a) for a in args])
    return stop.value.code


def test_bad_parquet_files_are_one_line_and_exit_2(tmp_path, capsys, rows_file):
    problems = bad_files(tmp_path)
    for name, problem in problems.items():
        status = triplets_status("--dataset-path", rows_file, "--max-samples", "20", "--include", tmp_path / name,
                                 "--output", tmp_path / "out.parquet")
        err = capsys.readouterr().err.strip()
        assert status == 2, (name, err)
        assert err.startswith(f"error: {tmp_path / name}: ") and problem in err, (name, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.parquet").exists()
    # through the training script's own command line too (a subprocess: the exit status is the point)
    result = run_script(TRAIN_SCRIPT, tmp_path / "truncated.parquet", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "truncated or corrupt parquet file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_parquet_file_from_elsewhere_needs_only_the_three_texts(tmp_path, rows_file):
    table = pa.table({"anchor": ["what is x", "what is y"], "positive": ["x is a letter", "y is too"],
                      "negative": ["the sky is blue", "grass is green"], "query_id": [7, 8]})
    pq.write_table(table, tmp_path / "hub.parquet")
    assert triplets_main(["--dataset-path", str(rows_file), "--max-samples", "20", "--include",
                          str(tmp_path / "hub.parquet"), "--output", str(tmp_path / "both.pkl")]) == 0
    both = load_triplets(tmp_path / "both.pkl")
    assert both.query_ids[-2:] == ["7", "8"] and both.positive_ids[-1] == text_id("y is too")
    assert both.negatives[-2:] == ["the sky is blue", "grass is green"]


def test_format_and_output_suffix_must_agree(tmp_path, rows_file, capsys):
    assert triplets_status("--dataset-path", rows_file, "--format", "pkl", "--output", tmp_path / "t.parquet") == 2
    assert "names a .parquet file, but --format is pkl" in capsys.readouterr().err
    assert triplets_main(["--dataset-path", str(rows_file), "--max-samples", "20",
                          "--output", str(tmp_path / "t.parquet")]) == 0  # the suffix picks the format
    assert pq.read_table(tmp_path / "t.parquet").column_names[:3] == TEXTS
