"""Tokenizers and embeddings: the output tokenizer (base, union or a model's), the re-indexing of every
vocabulary-axis tensor onto it, and the chat template. See README "Tokenizers and embeddings"."""

from hubmerge.merge.tokenizer.align import VocabAlignment
from hubmerge.merge.tokenizer.build import OutputTokenizer
from hubmerge.merge.tokenizer.chat import NAMED_TEMPLATES
from hubmerge.merge.tokenizer.files import TOKENIZER_FILES, write_tokenizer_files

__all__ = ["NAMED_TEMPLATES", "OutputTokenizer", "TOKENIZER_FILES", "VocabAlignment", "write_tokenizer_files"]
