"""Text files, tokenization, vocabularies, corpora and batches."""
