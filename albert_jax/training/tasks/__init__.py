"""The fine-tuning task families, one module each, found by task name through a registry.

==========================  ==========================  =====================================
module                      head                        tasks (``config.task``)
==========================  ==========================  =====================================
``glue``                    sequence_classification     sst2, cola, mnli, ... (GLUE)
``squad``                   question_answering          squad_v1, squad_v2
``token_classification``    token_classification        conll2003
``multiple_choice``         multiple_choice             race, swag
==========================  ==========================  =====================================

A new family is a module with a ``Family`` class (a :class:`~.base.Family`) and the
``TASKS`` it serves, added to :data:`FAMILY_MODULES`.
"""

from __future__ import annotations

import ml_collections

from albert_jax.training.tasks import glue, multiple_choice, squad, token_classification
from albert_jax.training.tasks.base import Family, FinetuneError

FAMILY_MODULES = (glue, squad, token_classification, multiple_choice)
# task name -> its family's class
REGISTRY: dict[str, type[Family]] = {
    task: module.Family for module in FAMILY_MODULES for task in module.TASKS
}


def family_for(config: ml_collections.ConfigDict) -> Family:
    """The family of ``config.task``, built on ``config``."""
    cls = REGISTRY.get(config.task)
    if cls is None:
        raise FinetuneError(
            f"unknown task {config.task!r} (GLUE: {', '.join(glue.TASKS)}; squad_v1, squad_v2, "
            "conll2003, race, swag)")
    return cls(config)
