"""mmrecall: multimodal content understanding for recommender recall."""

__version__ = "0.1.0"
