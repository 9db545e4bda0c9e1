"""`unswift audit`: the known attacks, the leak scan and the report.

Modules: `audit` (the orchestration), `attacks/` (one module per attack, release tensors in, recovered
weights out), `scoring` (recovered against source), `leaks` (hash scan, `protected_param_fraction`),
`rebuild` (recovered MLPs swapped into the release model), `texts` (held-out and attacker text),
`report` (the result types). The release folder itself is read by `packager.formats.release`.
"""

from packager.stages.audit.attacks import ATTACK_NAMES
from packager.stages.audit.audit import audit
from packager.stages.audit.report import AttackResult, AuditReport, LearningBudget

__all__ = ["ATTACK_NAMES", "AttackResult", "AuditReport", "LearningBudget", "audit"]
