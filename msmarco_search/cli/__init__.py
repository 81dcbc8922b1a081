"""Entry points: one module per command, each with ``main(argv=None) -> int`` that parses arguments, calls the
library and prints. The console commands of ``[project.scripts]`` and the scripts under the repository's stage
folders (``training/train_two_tower_from_triplets.py``, ...) are thin wrappers around these mains."""
