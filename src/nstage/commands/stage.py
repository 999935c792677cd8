"""``nstage stage``: TNM N category from the side of the primary and the positive node stations.

No imaging: applies the rules of :mod:`nstage.staging` (CLINICAL.md section 1) and prints one
JSON object on stdout with ``n_stage`` (8th edition), ``n_stage_9th``, ``trace``, ``reasons``,
``n2_stations`` and the ``edition_rules`` used.
"""

from __future__ import annotations

import argparse

from nstage.staging import STATIONS, UNKNOWN_SIDE_POLICIES

EXAMPLES = """examples:
  nstage stage --primary-side right --node 4R --node 7      # N2 / N2b
  nstage stage --primary-side left --node 10L,11L           # N1
  nstage stage --primary-side unknown --node 7              # N2 / N2a (either side)
"""


def register(subparsers) -> None:
    """Add the ``stage`` subcommand."""
    parser = subparsers.add_parser(
        "stage",
        help="N category (8th/9th edition) from the primary's side and positive node stations",
        description=(
            "Apply the TNM N rules (AJCC/UICC 8th edition; IASLC 9th edition N2a/N2b) to the "
            "side of the primary tumour and the IASLC stations of the positive regional "
            "nodes, and print one JSON object with the categories and the rule trace."
        ),
        epilog=EXAMPLES + f"\nvalid stations: {' '.join(STATIONS)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--primary-side",
        required=True,
        type=str.lower,
        choices=["left", "right", "unknown"],
        help="patient side of the primary tumour (unknown: no primary found or both lungs)",
    )
    parser.add_argument(
        "--node",
        dest="nodes",
        action="append",
        default=[],
        metavar="STATION",
        help=(
            "IASLC station of a positive regional node, case-insensitive; repeat the option "
            "or give a comma-separated list (e.g. --node 4R,7). None: N0"
        ),
    )
    parser.add_argument(
        "--stations-3-contralateral",
        action="store_true",
        help="count midline stations 3a/3p as contralateral (N3) instead of ipsilateral (N2)",
    )
    parser.add_argument(
        "--stations-5-6-n2-for-right",
        action="store_true",
        help="count stations 5/6 as N2 for a right primary instead of contralateral N3",
    )
    parser.add_argument(
        "--unknown-side-policy",
        choices=UNKNOWN_SIDE_POLICIES,
        default="agree",
        help=(
            "primary side unknown: 'agree' reports N only when a left and a right primary "
            "give the same answer, else NX (default); 'highest' the higher; 'nx' always NX"
        ),
    )
    parser.set_defaults(func=run)


def split_nodes(values: list[str]) -> list[str]:
    """Station codes from repeated and/or comma-separated ``--node`` values (empty parts dropped)."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def run(args: argparse.Namespace) -> int:
    """Print the N category as one JSON object; unknown station -> UsageError (exit 2)."""
    import json

    from nstage import __version__
    from nstage.staging import StagingRules, edition_rules, n_category

    rules = StagingRules(
        stations_3_ipsilateral=not args.stations_3_contralateral,
        stations_5_6_n3_for_right=not args.stations_5_6_n2_for_right,
        unknown_side=args.unknown_side_policy,
    )
    # Compute everything before printing so an error never leaves half an object on stdout.
    result = n_category(args.primary_side, split_nodes(args.nodes), rules).to_dict()
    result["edition_rules"] = edition_rules(rules)
    result["version"] = __version__
    print(json.dumps(result, indent=2))
    return 0
