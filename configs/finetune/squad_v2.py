"""SQuAD v2.0 (unanswerable questions): length 384, doc stride 128, batch 48 as for v1.1;
lr 3e-5, 8,144 steps, 814 warmup (the ALBERT paper's SQuAD 2.0 settings). A question is
answered "" when the null score beats the best span by eval.null_score_diff_threshold.

    albert-jax finetune --config configs/finetune/squad_v2.py --workdir /tmp/squad2 \
        --config.data.train_file=train-v2.0.json --config.data.validation_file=dev-v2.0.json
"""

from albert_jax.training.run_config import finetune_config


def get_config():
    c = finetune_config("squad_v2", learning_rate=3e-5, batch_size=48, steps=8144,
                        warmup=814, max_seq_length=384)
    c.eval_every = 1000
    return c
