"""How a message names a command: in the form the user started this program in.

One rule: a command is named as the user runs it. Started by a repository script, a command is that script's
path (``search/search.py index``); by a console command of the installed package, its name (``msmarco-search
index``); by ``python -m msmarco_search``, that (``python -m msmarco_search search index``). The runner
(``cli.run``) records the form before the command starts; a library used from Python names the console commands.
``MSMARCO_SEARCH_SHOWN_AS=script`` names the repository's scripts whatever the form: ``scripts/run_pipeline.sh``
sets it, since its user typed a repository script although the job runs the package as a module.
"""

from __future__ import annotations

import os
import re
import shlex
import sys

SCRIPT, CONSOLE, MODULE = "script", "console", "module"
# the repository's seed-named scripts, by command: the stages under their original names
SCRIPTS = {"cbow": "text_embeddings/train_text_embeddings_cbow_msmarco.py",
           "triplets": "preprocessing/generate_triplets.py", "train": "training/train_two_tower_from_triplets.py",
           "average": "training/average_two_tower_models.py", "export": "training/export_sentence_transformers.py",
           "search": "search/search.py", "evaluate": "evaluation/evaluate.py", "pipeline": "scripts/run_pipeline.sh"}
MODULE_COMMAND = "python -m msmarco_search"
SHOWN_AS = "MSMARCO_SEARCH_SHOWN_AS"
# the query the next-command lines suggest: one the DL 2019 and 2021 pools answer (the README's example)
DEMO_QUERY = "when was the salvation army founded"

_form = CONSOLE


def started_as(form: str) -> None:
    """Record how this program was started (``SCRIPT``, ``CONSOLE`` or ``MODULE``): the runner calls it."""
    global _form
    if form not in (SCRIPT, CONSOLE, MODULE):
        raise ValueError(f"unknown form {form!r}")
    _form = form


def _shown() -> str:
    return SCRIPT if os.environ.get(SHOWN_AS) == SCRIPT else _form


def command(name: str) -> str:
    """Command ``name`` (``cbow``, ``search``, ...) as the user types it in the form this program was started in."""
    shown = _shown()
    if shown == SCRIPT:
        return SCRIPTS[name]
    if shown == MODULE:
        return f"{MODULE_COMMAND} {name}"
    return f"msmarco-{name}"


def runnable(name: str) -> str:
    """Command ``name`` as typed at a shell prompt: ``command(name)``, with ``uv run`` (``bash`` for the main
    job's shell script) before a repository script."""
    if _shown() == SCRIPT:
        return f"{'bash' if name == 'pipeline' else 'uv run'} {SCRIPTS[name]}"
    return command(name)


def command_words(name: str, processes: int = 1) -> list[str]:
    """The words that start command ``name`` again as this program was started, under ``torchrun`` when it runs
    in several ``processes`` (a script, or a console command's file, is run by path; a module with ``-m``)."""
    if processes > 1:
        launch = ["torchrun", "--nproc-per-node", str(processes)]
        return [*launch, "-m", "msmarco_search", name] if _form == MODULE else [*launch, sys.argv[0]]
    if _form == SCRIPT:
        return ["uv", "run", sys.argv[0]]
    if _form == MODULE:
        return [*MODULE_COMMAND.split(), name]
    return [f"msmarco-{name}"]


def command_line(name: str, *arguments: object) -> str:
    """Command ``name`` with ``arguments``, as one line to paste at a shell prompt (``runnable``, quoted)."""
    return shlex.join([*runnable(name).split(), *map(str, arguments)])


def with_commands(text: str) -> str:
    """``text`` (a ``--help`` description) with its example commands, written ``uv run SCRIPT``, named as
    ``runnable`` names them: the console command for an installed package, the script in the repository
    (``uv run torchrun FLAGS SCRIPT``: ``torchrun FLAGS -m msmarco_search NAME`` outside it)."""
    for name, script in SCRIPTS.items():
        if _shown() != SCRIPT:
            text = re.sub(rf"uv run (torchrun [^\n]*?){re.escape(script)}", rf"\1-m msmarco_search {name}", text)
        text = text.replace(f"uv run {script}", runnable(name))
    return text


def program(name: str) -> str:
    """argparse's ``prog`` for command ``name``: the script's file name, the console command, or
    ``python -m msmarco_search NAME``, as the program was started."""
    if _form == SCRIPT:
        return os.path.basename(sys.argv[0])
    if _form == MODULE:
        return f"{MODULE_COMMAND} {name}"
    return f"msmarco-{name}"
