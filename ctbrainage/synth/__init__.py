"""The embedded synthetic pediatric head-CT cohort with a planted, known maturation schedule."""

from ctbrainage.synth.generate import CohortError, cohort_specs, generate_cohort
from ctbrainage.synth.head import ACQUISITIONS, SubjectSpec, simulate_head
from ctbrainage.synth.schedule import MaturationSchedule, ScheduleError

__all__ = [
    "ACQUISITIONS",
    "CohortError",
    "MaturationSchedule",
    "ScheduleError",
    "SubjectSpec",
    "cohort_specs",
    "generate_cohort",
    "simulate_head",
]
