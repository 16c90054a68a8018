"""The fields every fine-tuning config has (not a config itself: each task file calls
``finetune_config`` and sets its published hyperparameters).

Run any task config with

    albert-jax finetune --config configs/finetune/<task>.py --workdir DIR \
        [--config.init=albert-mini] [--config.key=value ...]

and rerun the same command to resume. Relative paths resolve from the current directory
when they exist there, else from the repository root.
"""

from __future__ import annotations

import ml_collections


def finetune_config(task: str, *, learning_rate: float, batch_size: int, steps: int,
                    warmup: int, max_seq_length: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = task
    c.init = "albert-base-v2"  # a hub name, or a model directory (albert_jax or HF)
    c.seed = 0
    c.global_batch_size = batch_size
    c.eval_batch_size = 64
    c.accumulation_steps = 1  # micro-batches per step (a scan inside the jitted step)
    c.num_train_steps = steps
    c.max_seq_length = max_seq_length
    c.dtype = "float32"  # compute dtype: "bfloat16" on GPU/TPU
    c.remat = "none"
    c.distributed = False  # call jax.distributed.initialize() (multi-host)
    c.metric = ""  # dev metric that selects the best checkpoint ("" = the task's default)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # AlbertConfig fields to override on the pretrained config (dropout, runtime options).
    c.model = ml_collections.ConfigDict(dict(
        classifier_dropout_prob=0.1, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, scan_layers=True, attention="explicit"))
    c.data = ml_collections.ConfigDict(dict(
        manual_dir="",  # GLUE: folder of local TSV files ("" = the TFDS catalogue)
        tfds_data_dir="",  # "" = TFDS' default
        train_file="", validation_file="", test_file="",  # SQuAD / CoNLL / multiple choice
        label_names=(),  # CoNLL: the tag set ("" = from the training file)
        num_choices=0,  # multiple choice: check every example has this many (0: any)
        doc_stride=128, max_query_length=64,  # SQuAD windows
        eval_split="",  # the split evaluated during training ("" = the task's dev split)
        max_train_examples=0, max_eval_examples=0,  # > 0: use the first N (smoke runs)
    ))
    c.eval = ml_collections.ConfigDict(dict(
        n_best_size=20, max_answer_length=30, null_score_diff_threshold=0.0,  # SQuAD
        tag_scheme="IOB2",  # CoNLL entity scoring: IOB1 | IOB2 | IOBES
    ))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=learning_rate, warmup_steps=warmup,
        end_learning_rate=0.0, power=1.0, weight_decay=0.01, clip_norm=1.0,
        b1=0.9, b2=0.999, eps=1e-6,
    ))
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 2
    c.eval_every = 1000  # a multiple of log_every; 0 = no dev evaluation
    return c
