"""dutrain.data"""
