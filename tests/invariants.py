"""Properties every n-stage.json must have (issue 15), checked on every staged output."""

from __future__ import annotations

CATEGORIES_8TH = ("N0", "N1", "N2", "N3")
CATEGORIES_9TH = ("N0", "N1", "N2a", "N2b", "N3")


def check_result_invariants(result: dict) -> None:
    """Assert the decision layer's contract on one result.

    - The reported N is the most probable category of P(N) (both editions), unless NX or
      ``most_probable.why_not`` says why not.
    - Counted nodes have p >= 0.5, negative candidates p < 0.5.
    - No lesion is listed twice (primary, its parts, nodes, candidates, lung lesions, others).
    - Each node's station and its alternatives carry probabilities summing to 1.
    """
    n8, n9 = result["n_stage"], result["n_stage_9th"]
    if n8 != "NX":
        p8, p9 = result["probabilities"], result["probabilities_9th"]
        assert abs(sum(p8.values()) - 1.0) < 2e-3 and abs(sum(p9.values()) - 1.0) < 2e-3
        top8 = max(CATEGORIES_8TH, key=lambda c: p8[c])
        top9 = max(CATEGORIES_9TH, key=lambda c: p9[c])
        mp = result["most_probable"]
        if mp["agrees_with_stage"]:
            assert p8[n8] >= p8[top8] - 1e-3, (n8, p8)
            assert p9[n9] >= p9[top9] - 1e-3, (n9, p9)
        else:
            assert mp["why_not"], mp
    for node in result["nodes"]:
        assert node["probability"] >= 0.5, node
    for node in result["negative_node_candidates"]:
        assert node["probability"] < 0.5, node
        assert node["n_category"] is None
    for node in result["nodes"] + result["negative_node_candidates"]:
        total = node["station_confidence"] + sum(a["probability"] for a in node["alternatives"])
        assert abs(total - 1.0) < 2e-3, node
    ids = []
    primary = result["primary_tumor"]
    for key in ("nodes", "negative_node_candidates", "lung_lesions", "other_lesions"):
        ids += [e["id"] for e in result[key]]
    if primary is not None:
        ids += [primary["id"], *(p["id"] for p in primary["parts"])]
    assert len(ids) == len(set(ids)), f"a lesion is listed twice: {sorted(ids)}"
