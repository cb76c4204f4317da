"""Token data: the corpus, the SentencePiece tokenizer and its byte tables, Parameter Golf shards, the data
bundle, evaluation windows and evaluation data."""
