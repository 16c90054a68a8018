"""Tiny ALBERT pretraining on the Gutenberg corpus: minutes on a CPU (tests and demos).

    albert-jax pretrain --config configs/pretrain/tiny.py --workdir /tmp/albert_tiny \
        [--config.num_train_steps=100 --config.mesh.data=1]
    albert-jax export /tmp/albert_tiny /tmp/albert_tiny_model

Rerunning the same pretrain command resumes from the latest checkpoint. The vocabulary is
the real 30000-piece ALBERT spiece.model. Every field and its default:
``albert-jax pretrain --help`` (built by ``albert_jax.training.run_config.pretrain_config``);
relative paths here resolve from this file.
"""

from albert_jax.training.run_config import config_relative, pretrain_config


def get_config():
    c = pretrain_config()  # the tiny recipe is the base's defaults
    c.data.corpus_dir = config_relative(__file__, "../../../shared/data/corpus/gutenberg_nltk")
    c.data.spiece_model = config_relative(__file__, "../../../shared/data/albert_spm/spiece.model")
    return c
