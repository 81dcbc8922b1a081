"""The commands: one module per command, each ``main(argv: list[str] | None = None) -> int`` that parses its
arguments, calls the library and prints; and ``run``, the one runner every way of starting them goes through.

``run(main, argv)`` runs a command and exits with its status: a ``PipelineError`` (a problem the user can fix)
becomes one line ``error: ...`` and exit status 2, running out of memory the same, Ctrl-C ``interrupted`` and 130.
The console commands of ``[project.scripts]`` (``msmarco-cbow``, ...) are the ``run_*`` functions below,
``python -m msmarco_search COMMAND`` is ``__main__``, and the repository's seed-named scripts call ``run``
themselves; each tells ``run`` how it was started (``core.commands``: messages and ``--help`` then name commands
that way). A command is imported only when it runs, and each command imports the library's modules that need
torch, numpy, gensim, faiss or bm25s inside its functions, after its arguments are parsed: ``--help`` and a
refused flag then take a bare interpreter's start, not the seconds of those imports (``tests/test_library.py``
holds it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from msmarco_search.core.commands import CONSOLE, started_as
from msmarco_search.core.errors import PipelineError

Main = Callable[[list[str] | None], "int | None"]


def run(main: Main, argv: list[str] | None = None, form: str = CONSOLE) -> NoReturn:
    """Run a command's ``main(argv)`` (``None``: the process's arguments) and exit with its status; ``form``: how the
    program was started (``core.commands``)."""
    started_as(form)
    try:
        status = main(argv)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except MemoryError:
        # a setting too large for this machine (--batch-size, --vector-size, a huge --max-samples)
        print("error: out of memory; lower --batch-size, --vector-size or --max-samples", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)


def cbow_main() -> Main:
    from msmarco_search.cli.cbow import main

    return main


def triplets_main() -> Main:
    from msmarco_search.cli.triplets import main

    return main


def train_main() -> Main:
    from msmarco_search.cli.train import main

    return main


def average_main() -> Main:
    from msmarco_search.cli.average import main

    return main


def export_main() -> Main:
    from msmarco_search.cli.export import main

    return main


def search_main() -> Main:
    from msmarco_search.cli.search import main

    return main


def evaluate_main() -> Main:
    from msmarco_search.cli.evaluate import main

    return main


def pipeline_main() -> Main:
    from msmarco_search.cli.pipeline import main

    return main


# every command by name, with what it does (``python -m msmarco_search --help`` lists them)
COMMANDS: dict[str, tuple[Callable[[], Main], str]] = {
    "cbow": (cbow_main, "stage 1: CBOW word vectors (gensim) from MS MARCO text"),
    "triplets": (triplets_main, "stage 2: (query, relevant passage, non-relevant passage) triplets"),
    "train": (train_main, "stage 3: a two-tower model trained from triplets"),
    "average": (average_main, "the average of two-tower models of one recipe (a model soup)"),
    "export": (export_main, "a two-tower model as a sentence-transformers folder"),
    "search": (search_main, "index a collection, search it, serve a search page"),
    "evaluate": (evaluate_main, "evaluate systems side by side against BM25"),
    "pipeline": (pipeline_main, "the main job: every stage, a scoreboard and a searchable index"),
}


def run_cbow() -> None:
    """``msmarco-cbow``."""
    run(cbow_main())


def run_triplets() -> None:
    """``msmarco-triplets``."""
    run(triplets_main())


def run_train() -> None:
    """``msmarco-train``."""
    run(train_main())


def run_average() -> None:
    """``msmarco-average``."""
    run(average_main())


def run_export() -> None:
    """``msmarco-export``."""
    run(export_main())


def run_search() -> None:
    """``msmarco-search``."""
    run(search_main())


def run_evaluate() -> None:
    """``msmarco-evaluate``."""
    run(evaluate_main())


def run_pipeline() -> None:
    """``msmarco-pipeline``."""
    run(pipeline_main())
