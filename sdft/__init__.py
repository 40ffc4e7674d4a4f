"""sdft: Self-Distillation Fine-Tuning (Yang et al. 2024, arXiv 2402.13669) for chat LLMs."""

__version__ = "0.1.0"
