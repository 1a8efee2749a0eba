"""Training: thin entry points (pretrain.py, finetune.py, instruct.py) over the job modules (pretraining,
finetuning, instruction_tuning, sharing tuning), each with its config on the shared loop's (config, loop)."""
