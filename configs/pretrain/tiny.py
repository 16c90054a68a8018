"""Tiny ALBERT pretraining on the Gutenberg corpus: minutes on a CPU (tests and demos).

    albert-jax pretrain --config configs/pretrain/tiny.py --workdir /tmp/albert_tiny
    # or: python -m albert_jax.train pretrain --config configs/pretrain/tiny.py \
    #         --workdir /tmp/albert_tiny [--config.num_train_steps=100 --config.mesh.data=1]
    albert-jax export /tmp/albert_tiny /tmp/albert_tiny_model

Rerunning the same pretrain command resumes from the latest checkpoint. The vocabulary is
the real 30000-piece ALBERT spiece.model; relative paths resolve from the repository root.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.global_batch_size = 16
    c.accumulation_steps = 1  # micro-batches per step (a scan inside the jitted step)
    c.num_train_steps = 300
    c.dtype = "float32"  # compute dtype: "bfloat16" on GPU/TPU
    c.remat = "none"  # "none" | "full" | "dots_saveable" | ...
    c.distributed = False  # call jax.distributed.initialize() (multi-host)

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: all devices

    c.model = ml_collections.ConfigDict(
        dict(
            vocab_size=30000,
            embedding_size=32,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=128,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            classifier_dropout_prob=0.0,
            initializer_range=0.02,
            hidden_act="gelu_new",
            scan_layers=True,
        )
    )

    c.data = ml_collections.ConfigDict(
        dict(
            corpus_dir="../shared/data/corpus/gutenberg_nltk",
            corpus_name="gutenberg",
            text_format="paragraphs",
            file_pattern="*.txt",
            validation_files=("shakespeare-macbeth*",),
            tfds_data_dir="",  # "" = WORKDIR/tfds
            spiece_model="../shared/data/albert_spm/spiece.model",
            max_seq_length=64,
            max_predictions_per_seq=10,
            short_seq_prob=0.1,
            masked_lm_prob=0.15,
            max_ngram=3,
        )
    )

    c.optimizer = ml_collections.ConfigDict(
        dict(
            name="lamb",
            learning_rate=0.02,
            warmup_steps=10,
            end_learning_rate=0.0,
            power=1.0,
            weight_decay=0.01,
            clip_norm=1.0,
            b1=0.9,
            b2=0.999,
            eps=1e-6,
        )
    )

    c.log_every = 10
    c.checkpoint_every = 100
    c.keep_checkpoints = 3
    c.eval_every = 100
    c.eval_batches = 2
    return c
