"""dutrain.rewards"""
