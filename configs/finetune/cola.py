"""CoLA (GLUE) acceptability, the published albert-base-v2 recipe (AdamW, lr 1e-5,
batch 16, 5,336 steps, 320 warmup, length 512); the best checkpoint by Matthews correlation.

    albert-jax finetune --config configs/finetune/cola.py --workdir /tmp/cola
"""

from albert_jax.training.run_config import config_relative, finetune_config


def get_config():
    c = finetune_config("cola", learning_rate=1e-5, batch_size=16, steps=5336,
                        warmup=320, max_seq_length=512)
    c.data.manual_dir = config_relative(__file__, "../../../shared/data/glue/CoLA")
    c.eval_every = 500
    return c
