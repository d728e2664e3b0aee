"""Experiments: several methods, one budget, one comparison figure and table.

Each module exposes HELP, add_arguments(parser), run_cli(args) -> exit code, and a Python function that
notebooks call directly. `EXPERIMENTS` maps the `selfsup-lab` subcommand to the module.
"""
EXPERIMENTS = {
    "compare-balancing": "balancing",  # collapse vs balance: naive / SwAV / DeepCluster / CoKe / ExCB
    "compare-negatives": "negatives",  # under vs over-clustering: SimCLR / BYOL / triplet / G-SimCLR
}
