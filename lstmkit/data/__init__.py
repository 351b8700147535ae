"""Data: tokenizers, vocabularies, loaders for labelled text, language-model corpora and numeric sequences."""
