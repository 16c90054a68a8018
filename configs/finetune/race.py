"""RACE reading comprehension (multiple choice, 4 options), the ALBERT paper's recipe
(AdamW, lr 1e-5, batch 32, 12,000 steps, 1,000 warmup, length 512). Input: JSON Lines, one
question per line (RACE's own files, one JSON object each, concatenated, work as they are).

    albert-jax finetune --config configs/finetune/race.py --workdir /tmp/race \
        --config.data.train_file=race_train.jsonl --config.data.validation_file=race_dev.jsonl
"""

from albert_jax.training.run_config import finetune_config


def get_config():
    c = finetune_config("race", learning_rate=1e-5, batch_size=32, steps=12000,
                        warmup=1000, max_seq_length=512)
    c.data.num_choices = 4
    c.eval_every = 1000
    return c
