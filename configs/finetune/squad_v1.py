"""SQuAD v1.1, the published albert-base-v2 recipe (AdamW, lr 5e-5, batch 48, length 384,
doc stride 128, 2 epochs = 3,650 steps of the 87,599 training questions, 10% warmup).

    albert-jax finetune --config configs/finetune/squad_v1.py --workdir /tmp/squad \
        --config.data.train_file=/path/to/train-v1.1.json
"""

from albert_jax.training.run_config import config_relative, finetune_config


def get_config():
    c = finetune_config("squad_v1", learning_rate=5e-5, batch_size=48, steps=3650,
                        warmup=365, max_seq_length=384)
    c.data.train_file = ""  # train-v1.1.json (not shipped with the repository)
    c.data.validation_file = config_relative(
        __file__, "../../../shared/data/squad/dev-v1.1.json.zip")
    c.eval_every = 1000
    return c
