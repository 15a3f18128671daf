"""`format_eval_table`: the aligned text summary of an eval.json dict that `saekit eval` and the demo print.

print(format_eval_table(evaluate_run("runs/demo/topk")))
"""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, pattern: str = "{:.4f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def format_eval_table(result: dict[str, Any]) -> str:
    """A compact, aligned, human-readable summary of an eval.json dict (for the CLI and demo)."""
    rows: list[tuple[str, str, str]] = []
    cached, heldout = result.get("cached") or {}, result.get("heldout") or {}

    def both(label: str, key: str, pattern: str = "{:.4f}", scale: float = 1.0) -> None:
        pick = lambda d: None if d.get(key) is None else d[key] * scale
        rows.append((label, _fmt(pick(cached), pattern), _fmt(pick(heldout), pattern)))

    both("FVU", "fvu")
    both("1 - FVU", "explained_variance")
    both("L0", "l0_mean", "{:.2f}")
    target = result.get("sparsity_target") or {}
    if target.get("target_l0") is not None:  # side by side with the achieved L0 (θ calibrated or not)
        label = "L0 target" + (" (θ calibrated)" if target.get("calibration") else "")
        rows.append((label, _fmt(target["target_l0"], "{:.2f}"), _fmt(target["target_l0"], "{:.2f}")))
    shrink = ((result.get("extras") or {}).get("shrinkage")) or {}
    if shrink:
        rows.append(("L2 ratio ||x̂||/||x||", "", _fmt(shrink.get("l2_ratio"))))
    both("dead latents %", "dead_fraction", "{:.2f}", 100.0)
    both("dense latents %", "dense_fraction", "{:.2f}", 100.0)
    splice = result.get("splice") or {}
    ce, rec, kl = splice.get("ce_loss", {}), splice.get("ce_recovered", {}), splice.get("kl", {})
    for label, key in (
        ("clean", "clean"),
        ("SAE", "sae"),
        ("zero-abl", "zero_ablation"),
        ("mean-abl", "mean_ablation"),
    ):
        rows.append((f"CE {label}", "", _fmt(ce.get(key))))
    rows.append(("CE recovered (zero)", "", _fmt(rec.get("zero_ablation"))))
    rows.append(("CE recovered (mean)", "", _fmt(rec.get("mean_ablation"))))
    rows.append(("KL(clean || SAE)", "", _fmt(kl.get("sae"))))
    grad = (result.get("selection_modes") or {}).get("grad")
    if grad:  # g-SAE: the rows above use plain selection; these use held-out gradients
        g_cached, g_heldout, g_splice = grad.get("cached") or {}, grad.get("heldout") or {}, grad["splice"]
        rows.append(("FVU (grad select)", _fmt(g_cached.get("fvu")), _fmt(g_heldout.get("fvu"))))
        rows.append(("CE SAE (grad select)", "", _fmt(g_splice.get("ce_loss", {}).get("sae"))))
        recovered = g_splice.get("ce_recovered", {}).get("zero_ablation")
        rows.append(("CE recovered (zero, grad select)", "", _fmt(recovered)))
    tokens = (result.get("settings") or {}).get("tokens", {})
    header = (
        "metric",
        f"cached ({tokens.get('cached_rows', 0)} rows)",
        f"held-out ({tokens.get('heldout_scored_positions', 0)} tok)",
    )
    width = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    line = lambda r: f"{r[0]:<{width[0]}}  {r[1]:>{width[1]}}  {r[2]:>{width[2]}}"
    sep = "-" * (sum(width) + 4)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])
