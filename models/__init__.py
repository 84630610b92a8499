"""The fraud model: a PyTorch sequence model, its training, artefacts and metrics."""
