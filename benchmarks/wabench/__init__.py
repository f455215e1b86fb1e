"""The benchmark behind `benchmarks/bench.py`, one module per concern.

common       names, units and the repository root shared by every part
fmt          numbers and sizes as the report prints them
datasets     data sets A and B: deterministic files, the next version, tree checks
measure      one timed run: wall, CPU, memory of the process tree, the summary line
stack        the servers on 127.0.0.1 (SeaweedFS, fake platform, W&B) and a hermetic env
contenders   the command line of each contender's upload and download
steps        rotation, progress lines, and the reference's set-up/timed/not-run steps
table        the A/B table: every contender uploads, then downloads, each data set
versions     partial, reusing and incremental transfers of A and B (the reference)
dataset_c    data set C: a million small files (generation, in-place change, checks)
bench_c      C's runs: folder bucket, its peers, S3
synthetic    a synthetic 10,000,000-entry version (its manifest written directly): ls, diff, a dry run, gc
report       the markdown report and the JSON document, section by section
report_versions  the partial/reusing and incremental sections of the report
report_c     C's section of the report and its targets
tally        the runs a report reads, their medians, and a section's verdict lines
machine      the machine and tool versions the report names
cli          arguments and the order of things (`main`)
"""
