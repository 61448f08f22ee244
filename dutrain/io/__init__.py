"""I/O every stage shares: local/S3 storage, the dataset's Parquet rows and PNG/image decoding.

A layer below the stages: it imports nothing from data/, sft/, rl/, evaluate/ or restore/.
"""
