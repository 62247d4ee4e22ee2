"""Training: the config, the shared run function and the pieces it uses.

One process-wide warnings filter lives here, so training, evaluation and the tools that import this package all
get it.
"""

import warnings

# peft and TRL still read a property that transformers 5 deprecates: a warning on every run that no user can act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
