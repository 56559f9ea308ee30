"""The GPU check (scripts/gpu_check.py, the one call a GPU session makes through scripts/gpu_run.sh): a machine
measured through the package, printed as one table judged against the aims of one H200. One module per part: the
rows and aims (report), the shared sizes and model loading (context), the data (data), FLOPs and MFU (flops), the
alternation of the measured sides (alternate), the encode and training rows (encode, training), and the other rows
with the run of them all (checks)."""
