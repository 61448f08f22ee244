"""dutrain.restore"""
