"""Hugging Face `tokenizers` on the same text and vocabulary as benches/tokenizer.rs, for comparison.

Trains a byte-level BPE (GPT-2 pre-split, 256 byte symbols + merges + <|endoftext|> = 4096) on the bundled
C4 train sample and times encode_batch over all its documents. `pip install tokenizers`, then
`python3 benches/hf_tokenizers.py` (threads: RAYON_NUM_THREADS, default all cores).
"""

import gzip
import json
import os
import time

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "..", "datasets", "c4", "c4-train.00000-of-00001.json.gz")
VOCAB = 4096


def main():
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    start = time.perf_counter()
    tokenizer.train_from_iterator(texts, trainer)
    train_s = time.perf_counter() - start
    print(f"vocab {tokenizer.get_vocab_size()}, trained in {train_s:.2f} s")

    def encode_all():
        return tokenizer.encode_batch(texts, add_special_tokens=False)

    encodings = encode_all()  # warm-up (and the BPE cache)
    tokens = sum(len(e.ids) for e in encodings)
    assert all(tokenizer.decode(e.ids) == t for e, t in zip(encodings[:50], texts[:50]))
    times = []
    for _ in range(10):
        start = time.perf_counter()
        encode_all()
        times.append(time.perf_counter() - start)
    best, median = min(times), sorted(times)[len(times) // 2]
    print(f"{len(texts)} docs, {n_bytes} bytes -> {tokens} tokens ({n_bytes / tokens:.3f} bytes/token)")
    print(f"encode_batch: best {n_bytes / best / 1e6:.1f} MB/s, median {n_bytes / median / 1e6:.1f} MB/s "
          f"(RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'default')}, {os.cpu_count()} cpus)")


if __name__ == "__main__":
    main()
