"""Experiments: several methods, one budget, one comparison figure and table.

Each module exposes HELP, add_arguments(parser), run_cli(args) -> exit code, and a Python function that
notebooks call directly. `EXPERIMENTS` maps the `selfsup-lab` subcommand to the module.
"""
EXPERIMENTS = {
    "compare-balancing": "balancing",  # collapse vs balance: naive / SwAV / DeepCluster / CoKe / ExCB
    "compare-negatives": "negatives",  # under vs over-clustering: SimCLR / BYOL / triplet / G-SimCLR
}


def parse_method(spec: str) -> tuple[str, dict]:
    """A method with options in one word: 'triplet:deputy=rank-rule,r_hi=12' → ('triplet', {...})."""
    from ..errors import UserError

    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"method spec '{spec}': '{item}' is not key=value (write e.g. coke:dual_lr=1)")
        options[key.strip()] = value.strip()
    return name.strip(), options
