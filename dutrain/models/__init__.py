"""dutrain.models"""
