"""The ground floor: the one error type, the one place that prints, the tokeniser, the device, memory checks."""
