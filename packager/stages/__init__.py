"""The pipeline's stages, in order: calibrate, plan, convert, evaluate, bench, audit."""
