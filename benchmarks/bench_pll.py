"""Pseudo-log-likelihood throughput: albert_jax engine against a transformers loop.

200 SST-2 dev sentences; albert-base-v2 shapes, random weights (the same for both), float32
(albert_jax also in bfloat16 with ``--dtype bfloat16``; transformers stays float32).
albert_jax: ``PseudoLogLikelihood`` (masked copies of all sentences sorted by length and
batched together), timed after a warm-up pass. transformers: for each sentence, its masked
copies (one per token) in one batch through ``AlbertForMaskedLM``, log-softmax at the
masked position. Reports tokens scored per second and the largest difference of the
sentence scores.

    python benchmarks/bench_pll.py [--limit 200] [--batch-size 32] [--dtype bfloat16] \
        [--length-buckets 16,24,...]
"""

from __future__ import annotations

import argparse
import shutil
import time

from _bench_common import (
    add_engine_args,
    engine_kwargs,
    hf_tokenizer,
    peak_line,
    random_base_checkpoint,
    sst2_sentences,
    useful_gflop,
)


def torch_pll(model, tokenizer, sentences) -> list[float]:
    import torch

    totals = []
    with torch.inference_mode():
        for s in sentences:
            ids = tokenizer(s, return_tensors="pt")["input_ids"][0]
            n = len(ids) - 2
            copies = ids.repeat(n, 1)
            positions = torch.arange(1, n + 1)
            copies[torch.arange(n), positions] = tokenizer.mask_token_id
            logits = model(copies).logits[torch.arange(n), positions]
            logp = torch.log_softmax(logits, dim=-1)[torch.arange(n), ids[1:-1]]
            totals.append(float(logp.sum()))
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200)
    add_engine_args(parser)
    args = parser.parse_args()

    from albert_jax.inference import PseudoLogLikelihood

    sentences = sst2_sentences(args.limit)
    directory, torch_model = random_base_checkpoint()
    try:
        pll = PseudoLogLikelihood.from_pretrained(directory, **engine_kwargs(args))
        start = time.perf_counter()
        pll(sentences)  # Warm-up: compiles each shape used.
        warm = time.perf_counter() - start
        start = time.perf_counter()
        ours = pll(sentences)
        jax_s = time.perf_counter() - start
        tokenizer = hf_tokenizer()
        torch_pll(torch_model, tokenizer, sentences[:2])
        start = time.perf_counter()
        theirs = torch_pll(torch_model, tokenizer, sentences)
        torch_s = time.perf_counter() - start
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    tokens = sum(r.num_tokens for r in ours)
    diff = max(abs(r.total_logprob - t) for r, t in zip(ours, theirs, strict=True))
    print(f"PLL over {len(sentences)} SST-2 dev sentences ({tokens} tokens scored); "
          f"albert-base-v2 shapes; albert_jax {args.dtype}, transformers float32")
    print(f"albert_jax engine: {tokens / jax_s:8.1f} tokens/s ({jax_s:.2f} s; first pass with "
          f"compilation {warm:.2f} s, {pll.num_traces} shapes compiled)")
    print(f"transformers loop: {tokens / torch_s:8.1f} tokens/s ({torch_s:.2f} s)")
    print(f"ratio: {torch_s / jax_s:.2f}x; max |total log-prob difference| {diff:.2e}")
    # Each sentence of n scored tokens is n forwards of length n + 2 ([CLS], [SEP]).
    gflop = useful_gflop([r.num_tokens + 2 for r in ours], [r.num_tokens for r in ours])
    print("albert_jax " + peak_line(gflop, jax_s))
    print("transformers " + peak_line(gflop, torch_s))


if __name__ == "__main__":
    main()
