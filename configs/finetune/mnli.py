"""MNLI (GLUE), the published albert-base-v2 recipe (AdamW, lr 3e-5, batch 128,
10,000 steps, 1,000 warmup, length 512). Data: the TFDS catalogue ``glue/mnli`` (needs the
network once), or the GLUE files with --config.data.manual_dir=/path/to/MNLI.

    albert-jax finetune --config configs/finetune/mnli.py --workdir /tmp/mnli
"""

import importlib.util
import os


def _common():
    """common.py beside this file (loaded by path: configs are not a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py")
    spec = importlib.util.spec_from_file_location("albert_jax_finetune_common", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config():
    c = _common().finetune_config("mnli", learning_rate=3e-5, batch_size=128, steps=10000,
                                  warmup=1000, max_seq_length=512)
    c.eval_every = 1000
    return c
