"""Tools built on the model and the training loop: comparison, conversion, export, benchmarks, Hub, demo."""
