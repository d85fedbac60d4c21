"""Training: tag-finetuned image models, dual-stream pretraining (and later G). Writes checkpoint
directories that `encoders.create_encoder(path)` loads; never imported by the inference side."""
