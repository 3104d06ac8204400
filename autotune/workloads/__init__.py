"""Workloads to tune on: prompt files (``prompt_file``), tokenized by the model (``tokens``)."""
