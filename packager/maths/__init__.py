"""The mathematics: series, the TaylorMLP transform, the bytes model, architecture adapters. No file I/O."""
