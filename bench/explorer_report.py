"""The tables of docs/explorer.md from a `bpnet explore` report (explorer.json): every stage exit x
resolution x precision with the oracle row per resolution, the AP-medium / AP-large gain per
resolution step, and the latency split by people per image.

    python bench/explorer_report.py RESULTS_DIR/explorer.json > tables.md
"""

import argparse
import json
import sys


def res(hw):
    return f"{hw[0]}×{hw[1]}"


def ms(value):
    return f"{value:.0f}" if value is not None else ""


def ap(value):
    return f"{value:.3f}" if value is not None else "–"   # e.g. AP medium of images with no medium people


def gain(value):
    return f"{value:+.0f}%" if value is not None else "–"


def point_table(report):
    lines = ["| resolution | stage exit | precision | AP | AP medium | AP large | pre-processing ms | CNN ms "
             "| decoding ms | total ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    oracle = {tuple(o["resolution"]): o for o in report["oracle"]}
    for hw in report["resolutions"]:
        if tuple(hw) in oracle:
            o = oracle[tuple(hw)]
            lines.append(f"| {res(hw)} | **oracle** (ceiling) | – | {ap(o['AP'])} | {ap(o['APm'])} | {ap(o['APl'])} "
                         "| | | | |")
        for p in (p for p in report["points"] if p["resolution"] == hw):
            lines.append(f"| {res(hw)} | {p['stage']} | {p['precision'].upper()} | {ap(p['AP'])} | {ap(p['APm'])} "
                         f"| {ap(p['APl'])} | {ms(p['pre_ms'])} | {ms(p['cnn_ms'])} | {ms(p['decode_ms'])} "
                         f"| {ms(p['latency_ms'])} |")
    return lines


def gain_table(report, precision="fp32"):
    lines = ["| stage exit | step | AP medium | gain | AP large | gain |", "|---|---|---|---|---|---|"]
    large = {(g["stage"], tuple(g["from"])): g for g in report["apl_gain_per_step"] if g["precision"] == precision}
    for g in (g for g in report["apm_gain_per_step"] if g["precision"] == precision):
        l = large.get((g["stage"], tuple(g["from"])))
        lines.append(f"| {g['stage']} | {res(g['from'])} → {res(g['to'])} | {ap(g['before'])} → {ap(g['after'])} "
                     f"| {gain(g['gain_pct'])} | " + (f"{ap(l['before'])} → {ap(l['after'])} | {gain(l['gain_pct'])} |"
                                                      if l else "| |"))
    return lines


def people_table(report, precision="fp32"):
    stages = sorted({g["stage"] for g in report["latency_by_people"]})
    shown = {stages[0], stages[-1]}
    lines = ["| resolution | stage exit | people per image | images | pre-processing | CNN | decoding |",
             "|---|---|---|---|---|---|---|"]
    for entry in report["latency_by_people"]:
        if entry["precision"] == precision and entry["stage"] in shown:
            for g in entry["groups"]:
                lines.append(f"| {res(entry['resolution'])} | {entry['stage']} | {g['people']} | {g['images']} "
                             f"| {ms(g['pre_ms'])} | {ms(g['cnn_ms'])} | {ms(g['decode_ms'])} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="explorer.json written by `bpnet explore`")
    report = json.loads(open(parser.parse_args().report).read())
    sections = [(f"### Every stage exit at every resolution (AP on the {report['num_images']} images; ms per "
                 f"image; INT8 calibrated with {report['calibrator']})", point_table(report)),
                ("### AP-medium (and AP-large) gain per resolution step, FP32", gain_table(report)),
                ("### Latency by people per image (FP32, medians per group, ms)", people_table(report))]
    for title, lines in sections:
        print(title + "\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
