"""Planning: which series order and coverage a release gets (fits, `--coverage auto`, `--slowdown X`)."""
