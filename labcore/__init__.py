"""labcore: the small shared core every layer imports (training, iris, evaluation, tools, the root scripts).

- ``labcore.io``: atomic writes (a reader never sees half a file) and sha256 of files.
- ``labcore.records``: the envelope every run, evaluation, export and benchmark record shares; reports.
- ``labcore.hardware``: the CPU's model and flags, and the ``hardware`` block of a record.
- ``labcore.threads``: the one thread-count rule, for llama.cpp and torch alike.
- ``labcore.text``: leaked role labels, special tokens and meta-instructions: patterns, detection, stripping.
- ``labcore.gguf``: loading GGUF models safely with llama-cpp-python, and the embedded model's GGUF.
- ``labcore.cli``: the command-line convention: a dataclass is the command line (training, evaluation, benchmarks).

It imports nothing from the rest of the project, and nothing heavy at import time (torch and llama_cpp load inside
the functions that need them), so the Iris Space ships it as it is: ``python tools/build_space.py DEST`` copies
``iris/`` and this package, the same files, into one folder.
"""
