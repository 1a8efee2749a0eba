"""Research tools that look inside models: the in-context-learning vs finetuning analysis, momentum attention
measured, ELECTRA-style encoder pretraining comparisons, self-attention attribution, knowledge neurons,
finetuning dynamics and loss landscapes. Library modules here are importable (``analysis.<tool>``); each command
a user runs is a thin CLI over them, named as train/ and eval/ name theirs (``pretrain.py`` over
``pretraining.py``). They read the inside of a decoder through ``metalm.probes``."""
