"""Publishing: the model card, the signature and the Hub push."""
