"""On-disk formats: release file names, the record, shards, statistics files, checkpoints; no mathematics."""
