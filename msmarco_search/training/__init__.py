"""Stage 3: the two-tower model, its losses and optimisers, the training loop, its file, export."""
