"""The Markdown page of ``experiments.gpu_suite``'s results (every row says where it was
measured; a CPU run says, first, that no GPU figure was measured)."""

from __future__ import annotations

__all__ = ["markdown"]


def _fmt(x, spec: str, none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def _timing_table(rows: list[dict], extra: tuple[str, ...] = ()) -> list[str]:
    head = ["row", "ms/step", "img/s", "TFLOP/s", "MFU (datasheet)", "MFU (measured peak)",
            "compile s", *extra]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], f"{r['ms_per_step']:.3f}", f"{r['items_per_s']:,.0f}",
                 _fmt(r["tflops"], ".3g"), _fmt(r["mfu_datasheet"], ".1%"),
                 _fmt(r["mfu_measured"], ".1%"), f"{r['compile_s']:.1f}",
                 *(str(r.get(k)) for k in extra)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _run_lines(r: dict) -> list[str]:
    reached = lambda k: (f"{r[k]:.1f} s" if r[k] is not None else
                         f"not reached in {r['wall_from_launch_s']:.0f} s")  # fmt: skip
    acc = _fmt(r["val_accuracy"], ".2%")
    cap = f", stopped at the {r['capped_at_s']:.0f} s cap" if r["capped_at_s"] else ""
    curve = ", ".join(f"{c['epoch']}: {_fmt(c['val_accuracy'], '.1%')} @ "
                      f"{_fmt(c['wall_from_launch_s'], '.0f', '?')} s" for c in r["curve"])  # fmt: skip
    return [f"`python {r['command']}`", "",
            f"- {r['epochs_done']}/{r['epochs_scheduled']} epochs, {r['wall_from_launch_s']:.1f} s "
            f"from launch{cap}; final val accuracy {acc}",
            f"- time to 79% val: {reached('time_to_79_s')}; to 85%: {reached('time_to_85_s')}",
            f"- curve (epoch: val @ s from launch): {curve}", ""]  # fmt: skip


def markdown(res: dict) -> str:
    dev, peaks = res["device"], res.get("peaks") or {}
    lines = [f"# gpu_suite on {dev['device_kind']} ({dev['platform']}), {dev['date_utc']}", ""]
    if dev["platform"] != "gpu":
        lines += ["**No GPU here: every figure below was measured on a CPU"
                  f"{' at --smoke sizes' if res['smoke'] else ''}. GPU figures: not measured.**",
                  ""]  # fmt: skip
    lines += [f"Command: `{res['command']}`; suite wall time {res['wall_s']:.1f} s.", ""]
    if peaks:
        lines += [f"Peaks for MFU: measured {_fmt(peaks['measured'], '.4g')} TFLOP/s "
                  f"({peaks['measured_what']}); datasheet {_fmt(peaks['datasheet'], 'g')} "
                  f"({peaks['datasheet_what']}).", ""]  # fmt: skip
    if res.get("vit"):
        lines += ["## ViT train step (the experiment's loss and step; synthetic uint8 on device)",
                  "", "attn_dropout=True drops attention probabilities as vit-pytorch does (the "
                  "row that matches it); False allows the fused (cuDNN) attention.", ""]  # fmt: skip
        lines += _timing_table(res["vit"], ("attention", "matches_vit_pytorch")) + [""]
    if res.get("torch"):
        lines += ["## PyTorch, same process", ""] + _timing_table(res["torch"]) + [""]
    if res.get("terms"):
        lines += ["## Per-term gradients (bench_terms)", "", "| K | variant | ms | ratio |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['k']} | {r['variant']} | {r['ms']:.3f} | {r['ratio']:.2f}x |"
                  for r in res["terms"]] + [""]  # fmt: skip
    if res.get("clip"):
        lines += ["## CLIP train step", ""] + _timing_table(res["clip"]) + [""]
    for name in ("seed", "strong"):
        if res.get(name):
            r = res[name]
            held = f"{r['data']}, {r['n_val']:,} images held out"
            lines += [f"## {name} recipe end to end ({held})", ""]
            lines += _run_lines(res[name])
    for s in res["skipped"]:
        lines.append(f"- skipped {s['part']}: {s['reason']}")
    for e in res["errors"]:
        lines.append(f"- **FAILED** {e['part']}: {e['error']}")
    return "\n".join(lines) + "\n"
