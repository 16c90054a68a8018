"""SST-2 (GLUE) sentiment classification, the published albert-base-v2 recipe
(AdamW, lr 1e-5, batch 32, 20,935 steps, 1,256 warmup, length 512), from local TSV files.

    albert-jax finetune --config configs/finetune/sst2.py --workdir /tmp/sst2
    albert-jax evaluate --workdir /tmp/sst2
    # a CPU run with the bundled albert-mini: see benchmarks/bench_finetune_sst2.py
"""

from albert_jax.training.run_config import config_relative, finetune_config


def get_config():
    c = finetune_config("sst2", learning_rate=1e-5, batch_size=32, steps=20935,
                        warmup=1256, max_seq_length=512)
    c.data.manual_dir = config_relative(__file__, "../../../shared/data/glue/SST-2")
    c.eval_every = 1000
    return c
