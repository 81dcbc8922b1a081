"""Files: atomic writes and claimed outputs, safe loading of every format the project reads, the MS MARCO files and
TREC runs, token arrays."""
