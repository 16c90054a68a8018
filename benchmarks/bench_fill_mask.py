"""Fill-mask throughput: the albert_jax engine against transformers' PyTorch pipeline.

The 872 SST-2 dev sentences, the middle word of each replaced by [MASK]; albert-base-v2
shapes with random weights (the same weights for both, float32), one run. albert_jax:
``FillMask`` (bucketed, jit-compiled, vocabulary projection only at the mask), timed after
a warm-up pass that compiles every bucket shape it needs (the compile time is printed too).
transformers: ``pipeline("fill-mask", batch_size=32)``, timed after a warm-up batch.

    python benchmarks/bench_fill_mask.py [--limit N] [--batch-size 32] [--top-k 5]
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
    mask_one_word,
    peak_line,
    random_base_checkpoint,
    sst2_sentences,
    useful_gflop,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N sentences only")
    parser.add_argument("--top-k", type=int, default=5)
    add_engine_args(parser)
    args = parser.parse_args()

    import torch
    import transformers

    from albert_jax.inference import FillMask

    texts = [mask_one_word(s) for s in sst2_sentences(args.limit)]
    directory, torch_model = random_base_checkpoint()
    try:
        fm = FillMask.from_pretrained(directory, **engine_kwargs(args))
        start = time.perf_counter()
        fm(texts, top_k=args.top_k)  # Warm-up: compiles each shape used.
        warm = time.perf_counter() - start
        start = time.perf_counter()
        ours = fm(texts, top_k=args.top_k)
        jax_s = time.perf_counter() - start

        pipe = transformers.pipeline("fill-mask", model=torch_model, tokenizer=hf_tokenizer(),
                                     device="cpu")
        with torch.inference_mode():
            pipe(texts[: args.batch_size], top_k=args.top_k, batch_size=32)
            start = time.perf_counter()
            theirs = pipe(texts, top_k=args.top_k, batch_size=32)
            torch_s = time.perf_counter() - start
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    agree = sum(a[0]["token"] == b[0]["token"] for a, b in zip(ours, theirs, strict=True))
    n = len(texts)
    print(f"inputs: {n} SST-2 dev sentences, one [MASK] each; albert-base-v2 shapes; albert_jax "
          f"{args.dtype}, transformers float32")
    print(f"albert_jax engine: {n / jax_s:8.1f} inputs/s ({jax_s:.2f} s; first pass with "
          f"compilation {warm:.2f} s, {fm.num_traces} shapes compiled)")
    print(f"transformers pipeline (batch_size=32): {n / torch_s:8.1f} inputs/s "
          f"({torch_s:.2f} s)")
    print(f"ratio: {torch_s / jax_s:.2f}x; top-1 agreement {agree}/{n}")
    gflop = useful_gflop([len(fm.tokenizer(t)["input_ids"]) for t in texts])
    print("albert_jax " + peak_line(gflop, jax_s))
    print("transformers " + peak_line(gflop, torch_s))


if __name__ == "__main__":
    main()
