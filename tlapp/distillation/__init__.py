"""Knowledge distillation: compress a trained classification run (the teacher) into a small, fast student.

Importing this package registers the "student" model type in ``tlapp.runs.MODEL_BUILDERS``, so
``tlapp.runs.load_predictor`` loads student runs like any other classification run.
"""

from tlapp.distillation.cli import register
from tlapp.distillation.compare import TEMPERATURES, agreement, compare, measure_latency, state_dict_mb, temperature_table
from tlapp.distillation.engine import (
    DISTILLED,
    LABELS_ONLY,
    WITHOUT_TEACHER_DIR,
    DistillConfig,
    distill,
    load_teacher,
    run_distillation,
    teacher_collection,
    teacher_gain_note,
)
from tlapp.distillation.loss import DistillationLoss, soft_targets
from tlapp.distillation.students import (
    DEFAULT_STUDENT,
    STUDENTS,
    StudentSpec,
    available_students,
    build_from_info,
    describe,
    get_student,
)

__all__ = [
    "DEFAULT_STUDENT",
    "DISTILLED",
    "LABELS_ONLY",
    "STUDENTS",
    "TEMPERATURES",
    "WITHOUT_TEACHER_DIR",
    "DistillConfig",
    "DistillationLoss",
    "StudentSpec",
    "agreement",
    "available_students",
    "build_from_info",
    "compare",
    "describe",
    "distill",
    "get_student",
    "load_teacher",
    "measure_latency",
    "register",
    "run_distillation",
    "soft_targets",
    "state_dict_mb",
    "teacher_collection",
    "teacher_gain_note",
    "temperature_table",
]
