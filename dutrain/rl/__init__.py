"""RL stage (`dutrain rl`): GRPO with vLLM rollout actors and DDP learner actors on Ray.

controller.py (the loop, `run`), groups.py (worker groups and placement), rollout.py, learner.py,
weight_sync.py, batch.py (the batch type), loss.py (GRPO pieces), scoring.py (rewards),
checkpoint.py. See docs/rl.md.
"""
