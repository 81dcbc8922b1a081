"""The built wheel, installed in a fresh virtual environment, runs the whole main job from a folder outside the
repository: no stage may reach for a repository path."""

import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest
from conftest import ROOT, Corpus, make_corpus, write_tsv_folder


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("uv") is None, reason="builds the wheel with uv")
def test_the_installed_wheel_runs_the_main_job_outside_the_repository(tmp_path):
    # the wheel, built offline from uv's cache (the build backend was fetched when the project was synced)
    subprocess.run(["uv", "build", "--wheel", "--offline", "--out-dir", tmp_path / "dist", ROOT], check=True,
                   capture_output=True, text=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("msmarco_search-*.whl"))
    # a fresh environment whose third-party packages are this one's, and whose msmarco_search is the wheel's
    environment = tmp_path / "env"
    venv.create(environment, with_pip=False)
    python = environment / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(["uv", "pip", "install", "--offline", "--no-deps", "--python", python, wheel], check=True,
                   capture_output=True, text=True, timeout=300)

    work = tmp_path / "elsewhere"
    corpus = make_corpus()
    train = write_tsv_folder(Corpus(corpus.queries[::2], corpus.passages), work / "train", split="train")
    evaluation = write_tsv_folder(Corpus(corpus.queries[1::2], corpus.passages), work / "dl", split="dev",
                                  candidates=False)
    where = subprocess.run([python, "-c", "import msmarco_search; print(msmarco_search.__file__)"], cwd=work,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(site)), where  # the wheel's copy, not the repository's
    result = subprocess.run([python, "-m", "msmarco_search", "pipeline", "1000", "--dataset-path", train,
                             "--split", "train", "--evaluate-on", evaluation, "--seeds", "1", "--epochs", "1",
                             "--cbow-epochs", "1", "--vector-size", "16", "--min-count", "1",
                             "--ict-per-passage", "1", "--min-relevance", "1", "--jobs", "1"],
                            cwd=work, capture_output=True, text=True, timeout=900,
                            env={"PATH": "/usr/bin:/bin", "MSMARCO_SEARCH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
                                 "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "$ python -m msmarco_search train" in result.stdout
    assert str(ROOT) not in result.stdout + result.stderr
    assert list((work / "checkpoints").glob("two_tower_model_*.pt"))
    assert list((work / "checkpoints").rglob("evaluation.json")) or "nDCG@10" in result.stdout
