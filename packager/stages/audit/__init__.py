"""`unswift audit`: the known attacks, the leak scan and the report."""

from packager.stages.audit.audit import *  # noqa: F401,F403
from packager.stages.audit.audit import ATTACK_NAMES, LearningBudget, ReleaseFiles, audit  # noqa: F401
