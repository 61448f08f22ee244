"""dutrain: train vision-language models to understand image degradation physically."""

__version__ = "0.1.0"
