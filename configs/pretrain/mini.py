"""albert-mini: the small ALBERT shipped with albert_jax, pretrained on the Gutenberg corpus.

    albert-jax pretrain --config configs/pretrain/mini.py --workdir /tmp/albert_mini
    albert-jax export /tmp/albert_mini /tmp/albert_mini_model

The real 30000-piece ALBERT vocabulary, embedding 128, hidden 256, one layer applied 12
times, sequence length 128, MLM + SOP with LAMB; Macbeth is held out for evaluation.
Sized to train in about 90 minutes on a 2-core CPU. Rerunning the command resumes.
"""

from albert_jax.training.run_config import config_relative, pretrain_config


def get_config():
    c = pretrain_config()
    c.data.corpus_dir = config_relative(__file__, "../../../shared/data/corpus/gutenberg_nltk")
    c.data.spiece_model = config_relative(__file__, "../../../shared/data/albert_spm/spiece.model")
    c.global_batch_size = 32
    c.num_train_steps = 1600
    c.model.update(
        embedding_size=128,
        hidden_size=256,
        num_hidden_layers=12,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=512,
    )
    c.data.max_seq_length = 128
    c.data.max_predictions_per_seq = 20
    c.optimizer.learning_rate = 0.005
    c.optimizer.warmup_steps = 200
    c.log_every = 20
    c.checkpoint_every = 200
    c.eval_every = 200
    c.eval_batches = 8
    return c
