"""Where MS MARCO comes from: the Hugging Face hub, local row files, or the official passage-ranking TSVs.

``open_source`` is the source the user asked for (the hub by default, local files with ``--dataset-path``);
the sources themselves are ``hub.HubSource``, ``rows.RowFileSource``/``rows.DatasetsDiskSource`` and
``tsv.TsvSource``, and every one yields the records of ``records``.
"""

from __future__ import annotations

from pathlib import Path

from msmarco_search.core.errors import PipelineError
from msmarco_search.data.hub import HubSource
from msmarco_search.data.records import Source
from msmarco_search.data.rows import ROW_SUFFIXES, DatasetsDiskSource, RowFileSource
from msmarco_search.data.tsv import TsvSource, listing, names_split, tsv_files_from
from msmarco_search.io.msmarco_files import folder_contents, nearby

# ---------------------------------------------------------------------------------------------- choosing


def open_source(dataset_paths: list[str | Path] | None, config: str = "v1.1", split: str = "train",
                data_dir: str | Path = "data", min_relevance: int = 1, *, split_given: bool = False) -> Source:
    """The source the user asked for: the hub by default, local files with ``--dataset-path``.

    ``split_given``: the user gave ``split`` (``--split``), so it must name what is read: a hub split, a split of
    a ``datasets`` folder, the row files or the TSVs of a split (``tsv_files_from``); a split that names
    nothing is an error listing what is there. A default split picks what it names and otherwise leaves a
    folder's files as they are.
    """
    if not dataset_paths:
        return HubSource(config, split, Path(data_dir))
    paths = [Path(p) for p in dataset_paths]
    for path in paths:
        if not path.exists():
            raise PipelineError(f"not found{nearby(path)}", path)
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        if (folder / "dataset_info.json").exists() or (folder / "dataset_dict.json").exists():
            return DatasetsDiskSource(folder, split, split_given)
        rows = sorted(p for p in folder.iterdir() if p.suffix in ROW_SUFFIXES and p.is_file())
        if rows:
            return RowFileSource(_row_files_of_split(rows, split, split_given, folder))
        files = tsv_files_from(paths, split, split_given=split_given)
        if not any(vars(files).values()):
            raise PipelineError("holds no MS MARCO data (row .jsonl/.json/.parquet, a datasets folder, or "
                                f"collection/queries/qrels TSVs){folder_contents(folder)}", folder)
        return TsvSource(files, min_relevance)
    if all(p.is_file() and p.suffix in ROW_SUFFIXES for p in paths):
        if split_given and not any(names_split(p.name, split) for p in paths):
            raise PipelineError(f"--split {split} names none of the row files given ({listing(paths)}); a row "
                                "file is read whole, so leave --split out, or give the files of that split")
        return RowFileSource(paths)
    if any(p.suffix in ROW_SUFFIXES for p in paths if p.is_file()):
        raise PipelineError("mixes row-layout files with other files; give one kind at a time")
    return TsvSource(tsv_files_from(paths, split, split_given=split_given), min_relevance)


def _row_files_of_split(rows: list[Path], split: str, split_given: bool, folder: Path) -> list[Path]:
    """The row files of a folder that ``split`` names (``train-00000-of-00001.parquet``, ``validation.jsonl``);
    none named: all of them for a default split, an error listing them for a split the user gave."""
    named = [p for p in rows if names_split(p.name, split)]
    if named:
        return named
    if split_given:
        raise PipelineError(f"--split {split} names none of its row files ({listing(rows)}): give a --split that "
                            "their names hold, or leave --split out to read them all", folder)
    return rows
