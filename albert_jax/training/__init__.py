"""Training: the generic sharded trainer and the tasks built on it.

``run_config`` (the run config every run shares; light, no JAX at import) ->
``trainer`` (TrainState, Task, steps, train_loop; knows no task) and ``checkpoint`` (orbax)
-> ``pretrain`` (MLM + SOP) and ``tasks/`` (fine-tuning families) -> ``finetune`` ->
``export``. Nothing below imports anything above it.
"""
