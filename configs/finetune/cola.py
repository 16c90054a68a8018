"""CoLA (GLUE) acceptability, the published albert-base-v2 recipe (AdamW, lr 1e-5,
batch 16, 5,336 steps, 320 warmup, length 512); the best checkpoint by Matthews correlation.

    albert-jax finetune --config configs/finetune/cola.py --workdir /tmp/cola
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
    c = _common().finetune_config("cola", learning_rate=1e-5, batch_size=16, steps=5336,
                                  warmup=320, max_seq_length=512)
    c.data.manual_dir = "../shared/data/glue/CoLA"
    c.eval_every = 500
    return c
