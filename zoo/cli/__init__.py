"""Command-line tools; ``train.py`` and ``evaluate.py`` at the repository root call these."""
