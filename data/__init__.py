"""Data: the tokenizer, the bundled world, shard writers and readers, semi-causal batches."""
