"""dutrain.degrade"""
