"""Loader throughput: full pipelines (`run`), the stages under them (`stages`: tar read, decode
only), a per-file PIL baseline (`files_baseline`), the matrix over backends, threads, presets and
crops (`matrix`), the model-in-the-loop diagnosis (`model`, given a training step), process-tree
CPU and memory accounting (`resources`), and the command-line options (`cli`).
"""
