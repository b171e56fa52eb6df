"""orchestrator: runs the two-stage FER study as a DAG of jobs (local, SLURM, Ray).

It knows nothing of tensors: units are plain specs handed to `fer_core.unit.run_unit` in a
worker process; results come back as rows and are stored as Parquet.
"""
