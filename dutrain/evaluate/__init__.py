"""dutrain.evaluate"""
