"""Training entry points (pretrain, finetune, instruct) on one shared loop."""
