"""CoNLL-2003 named entities (token classification; IOB1 tags as distributed, scored at
the entity level). ALBERT published no NER recipe: this is the usual BERT one (AdamW, lr 5e-5,
batch 32, 3 epochs of the 14,041 training sentences = 1,317 steps, 10% warmup, length 128).

    albert-jax finetune --config configs/finetune/conll2003.py --workdir /tmp/ner \
        --config.data.train_file=eng.train --config.data.validation_file=eng.testa
"""

from albert_jax.training.run_config import finetune_config


def get_config():
    c = finetune_config("conll2003", learning_rate=5e-5, batch_size=32, steps=1317,
                        warmup=132, max_seq_length=128)
    c.eval.tag_scheme = "IOB1"
    c.eval_every = 400
    c.log_every = 50
    return c
