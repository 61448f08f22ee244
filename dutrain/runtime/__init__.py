"""The Ray session and the environment actors run in, shared by every stage's driver.

A layer below the stages: it imports nothing from data/, sft/, rl/, evaluate/ or restore/.
"""
