"""The console commands of ``[project.scripts]``: each runs one driver's ``main`` through ``run_cli``, so a
``PipelineError`` is one line and exit status 2 there too, as in the scripts."""

from __future__ import annotations

from importlib import import_module

from msmarco_search.core.errors import run_cli


def _run(driver: str) -> None:
    run_cli(import_module(f"msmarco_search.cli.{driver}").main)


def cbow() -> None:
    _run("cbow")


def triplets() -> None:
    _run("triplets")


def train() -> None:
    _run("train")


def average() -> None:
    _run("average")


def search() -> None:
    _run("search")


def evaluate() -> None:
    _run("evaluate")


def export() -> None:
    _run("export")


def pipeline() -> None:
    _run("pipeline")
