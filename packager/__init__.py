"""unswift: package a checkpoint as a TaylorMLP release, measure it, audit it, sign it and push it.

The stable entry points are in :mod:`packager.api`; everything else is internal.
"""

__version__ = "0.1.0"

#: The transformers versions a release's loader is tested with; written into every release.
TRANSFORMERS_RANGE = ">=5.0,<6"
