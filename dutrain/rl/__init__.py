"""dutrain.rl"""
