"""dutrain.sft"""
