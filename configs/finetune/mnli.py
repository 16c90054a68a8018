"""MNLI (GLUE), the published albert-base-v2 recipe (AdamW, lr 3e-5, batch 128,
10,000 steps, 1,000 warmup, length 512). Data: the TFDS catalogue ``glue/mnli`` (needs the
network once), or the GLUE files with --config.data.manual_dir=/path/to/MNLI.

    albert-jax finetune --config configs/finetune/mnli.py --workdir /tmp/mnli
"""

from albert_jax.training.run_config import finetune_config


def get_config():
    c = finetune_config("mnli", learning_rate=3e-5, batch_size=128, steps=10000,
                        warmup=1000, max_seq_length=512)
    c.eval_every = 1000
    return c
