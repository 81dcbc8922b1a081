"""Stage-2 data: where MS MARCO comes from (sources), the vocabulary, triplets and their file, and the token arrays
stage 3 trains on."""
