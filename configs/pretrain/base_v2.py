"""albert-base-v2 pretraining, the published recipe (google-research/albert): batch 4096,
length 512, 125k steps, LAMB lr 0.00176 with 3,125 warmup steps and linear decay to 0,
weight decay 0.01, clipping at global norm 1.0, max_predictions_per_seq 20. For a TPU pod
slice (e.g. v4-64 / v5e-64) or a multi-GPU cluster; bfloat16 compute, float32 parameters.

Single host (all local devices in one data-parallel mesh)::

    albert-jax pretrain --config configs/pretrain/base_v2.py --workdir /mnt/shared/albert_base_v2 \
        --config.data.corpus_dir=/data/wiki_books_txt

Multi-host (a TPU pod slice: the same command on every host; jax.distributed finds the
coordinator from the TPU environment)::

    gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command \
      "cd albert_jax && .venv/bin/albert-jax pretrain --config configs/pretrain/base_v2.py \
         --workdir /mnt/shared/albert_base_v2 --distributed \
         --config.data.corpus_dir=/data/wiki_books_txt"

On GPU clusters (SLURM, or by hand) set ``JAX_COORDINATOR_ADDRESS=host0:1234``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (or run under SLURM) and pass ``--distributed``.
Each process reads its own share of the documents; the global batch is 4096 across all
processes. The workdir is a local path that every host can write (e.g. an NFS/Filestore
mount): metrics.jsonl and TensorBoard files are written with plain file I/O. Rerunning the
command resumes from the latest checkpoint in the workdir.
Export: ``albert-jax export /mnt/shared/albert_base_v2 ./albert_base_v2_jax``.
"""

from albert_jax.training.run_config import config_relative, pretrain_config


def get_config():
    c = pretrain_config()
    c.seed = 12345
    c.global_batch_size = 4096
    c.num_train_steps = 125_000
    c.dtype = "bfloat16"
    c.model.update(
        embedding_size=128,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        classifier_dropout_prob=0.1,
    )
    # Replace with Wikipedia + books: one sentence per line, a blank line between documents.
    c.data.update(
        corpus_dir=config_relative(__file__, "../../../shared/data/corpus/gutenberg_nltk"),
        corpus_name="pretraining_corpus",
        text_format="lines",
        validation_files=(),
        spiece_model=config_relative(__file__, "../../../shared/data/albert_spm/spiece.model"),
        max_seq_length=512,
        max_predictions_per_seq=20,
    )
    c.optimizer.update(learning_rate=0.00176, warmup_steps=3125)
    c.log_every = 100
    c.checkpoint_every = 5000
    c.eval_every = 0
    c.eval_batches = 10
    return c
