"""Training data made by models: mined negatives, self-training labels, teacher labels."""
