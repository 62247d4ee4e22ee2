"""Evaluation of base models, adapters and GGUF exports: metrics, one evaluation core, three comparison scripts."""
